"""Manual commit: each client closes the segment now (Deepgram ``Finalize``, ElevenLabs ``commit``),
and the resilience layer sends it after the audio before it, once per connection, across reconnects.

The scripted servers only close a segment on a full 1 s window or when told to, so a final covering
half a second is the commit's answer and nothing else's.
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.events import RecognizerState
from bridge.recognizers.base import RecognizerStream, StreamOptions, Transcript
from bridge.recognizers.commits import MAX_PENDING, CommitMarks
from bridge.recognizers.deepgram.live import DeepgramRecognizer
from bridge.recognizers.elevenlabs.live import ElevenLabsRecognizer
from bridge.recognizers.resilience import ResilientStream, RetryPolicy
from bridge.testing import ScriptedDeepgramServer
from bridge.testing.deepgram import window_word
from bridge.testing.elevenlabs import ScriptedScribeServer

OPTIONS = StreamOptions(call_sid="CA" + "c0" * 16, track="inbound")
FAST = RetryPolicy(keepalive_interval=0.5, backoff_base=0.02, backoff_cap=0.1, max_failures=6, failure_window=5.0,
                   send_chunk_seconds=0.1)  # fmt: skip
HALF = bytes(range(256)) * 15 + bytes(range(160))  # 0.5 s of varied mu-law

pytestmark = pytest.mark.timeout(60)


async def first_final(stream: RecognizerStream | ResilientStream) -> Transcript:
    async for event in stream.events():
        if isinstance(event, Transcript) and event.is_final:
            return event
    raise AssertionError("the stream ended without a final")


async def test_deepgram_commit_is_finalize_and_answers_with_the_segment_so_far() -> None:
    async with ScriptedDeepgramServer() as server:
        stream = await DeepgramRecognizer(server.url).open(OPTIONS)
        await stream.send(HALF)
        await stream.commit()
        final = await first_final(stream)
        await stream.close(timeout=5)
    assert (final.start, final.end, final.text, final.from_finalize) == (0.0, 0.5, window_word(HALF), True)
    assert server.connections[0].controls == ["Finalize", "CloseStream"]


async def test_elevenlabs_commit_is_a_commit_chunk_and_answers_with_the_segment_so_far() -> None:
    async with ScriptedScribeServer() as server:
        stream = await ElevenLabsRecognizer(server.url).open(OPTIONS)
        await stream.send(HALF)
        await stream.commit()
        final = await first_final(stream)
        await stream.close(timeout=5)
    assert (final.start, final.end, final.text) == (0.0, 0.5, window_word(HALF))
    chunks = server.connections[0].chunks
    assert chunks[-2].commit and sum(len(c.audio_base_64) for c in chunks[:-1]) > 0


class Track:
    """A :class:`ResilientStream` on ``recognizer`` whose finals and states are collected."""

    def __init__(self, recognizer: DeepgramRecognizer, origin: float = 7.0) -> None:
        self.finals: list[Transcript] = []
        self.states: list[RecognizerState] = []
        self.reconnecting = asyncio.Event()
        self.connected_again = asyncio.Event()
        self.final_seen = asyncio.Event()
        self.stream = ResilientStream(recognizer, OPTIONS, origin=origin, policy=FAST, on_state=self._state)
        self._reader: asyncio.Task[None] | None = None

    def _state(self, state: RecognizerState, detail: str) -> None:
        self.states.append(state)
        if state == "reconnecting":
            self.reconnecting.set()
        elif state == "connected" and self.reconnecting.is_set():
            self.connected_again.set()

    async def start(self) -> None:
        await self.stream.start()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for event in self.stream.events():
            if isinstance(event, Transcript) and event.is_final:
                self.finals.append(event)
                self.final_seen.set()

    async def feed(self, audio: bytes) -> None:
        for i in range(0, len(audio), 160):  # 20 ms frames, as a call sends them
            await self.stream.send(audio[i : i + 160])

    async def close(self) -> None:
        await self.stream.close(timeout=5)
        assert self._reader is not None
        await self._reader


async def test_a_commit_flushes_the_held_audio_first_and_its_final_ends_where_it_was_made() -> None:
    async with ScriptedDeepgramServer() as server:
        track = Track(DeepgramRecognizer(server.url))
        await track.start()
        await track.feed(HALF + HALF[:480])  # 0.56 s: the last 60 ms are held back to coalesce (100 ms chunks)
        at = await track.stream.commit()
        await track.final_seen.wait()
        await track.close()
    assert at == 7.56
    assert [(f.start, round(f.end, 3), f.text) for f in track.finals] == [(7.0, 7.56, window_word(HALF + HALF[:480]))]
    assert server.connections[0].controls == ["Finalize", "Finalize", "CloseStream"]  # the commit, then close's


async def test_a_commit_during_a_reconnect_is_sent_after_the_replay_and_answered_once() -> None:
    async with ScriptedDeepgramServer() as server:
        track = Track(DeepgramRecognizer(server.url))
        await track.start()
        await track.feed(HALF)
        await server.wait_for_audio(len(HALF))
        server.reject(503, times=2)  # the next two reconnects fail: the commit waits out the outage
        await server.close_all()
        await track.reconnecting.wait()
        at = await track.stream.commit()
        await track.connected_again.wait()
        await track.final_seen.wait()
        await track.close()
    assert at == 7.5
    # Answered on the new connection, after the replayed half second, and stored once.
    assert [(f.start, f.end, f.text) for f in track.finals] == [(7.0, 7.5, window_word(HALF))]
    assert server.connections[-1].audio == HALF
    assert server.connections[-1].controls[0] == "Finalize"
    assert sum(c.controls.count("Finalize") for c in server.connections) == 2  # the commit's, and close's


async def test_an_answered_commit_is_not_sent_again_after_a_reconnect() -> None:
    async with ScriptedDeepgramServer() as server:
        track = Track(DeepgramRecognizer(server.url))
        await track.start()
        await track.feed(HALF)
        await track.stream.commit()
        await track.final_seen.wait()
        await track.feed(HALF)
        await server.wait_for_audio(2 * len(HALF))
        await server.close_all()
        await track.connected_again.wait()
        await track.close()
    assert [(f.start, f.end) for f in track.finals] == [(7.0, 7.5), (7.5, 8.0)]
    assert server.connections[0].controls == ["Finalize"]
    assert server.connections[-1].controls == ["Finalize", "CloseStream"]  # close's only
    assert server.connections[-1].audio == HALF  # the uncovered half second, replayed once


async def test_a_commit_with_nothing_new_since_the_last_final_sends_nothing() -> None:
    async with ScriptedDeepgramServer() as server:
        track = Track(DeepgramRecognizer(server.url))
        await track.start()
        await track.feed(HALF)
        first = await track.stream.commit()
        await track.final_seen.wait()
        again = await track.stream.commit()
        await track.close()
    assert first == again == 7.5
    assert server.connections[0].controls == ["Finalize", "Finalize", "CloseStream"]  # the first commit, close's
    assert await track.stream.commit() is None  # a closed stream has nothing to commit


def test_commit_marks_bound_their_backlog_and_forget_what_finals_cover() -> None:
    marks = CommitMarks()
    for mark in range(1, 2 * MAX_PENDING):
        marks.add(mark * 160, covered=0)
    assert len(marks.pending) == MAX_PENDING and marks.pending[-1] == (2 * MAX_PENDING - 1) * 160
    marks.add(160, covered=0)  # not after the newest: already pending or older
    assert len(marks.pending) == MAX_PENDING
    assert marks.chunk(0, 1000) == 160 and marks.chunk(170, 1000) == 150
    assert marks.due(480) == 3 and marks.due(480) == 0  # once per connection
    marks.covered(320)
    assert marks.pending[0] == 480
    marks.restart(400)  # a new connection replays from byte 400: the commit at 480 is due again there
    assert marks.due(480) == 1
