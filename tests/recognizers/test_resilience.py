"""The resilience layer under real faults: every faulty run must yield the finals of a clean run.

The scripted server's finals depend only on the audio it heard, so after de-duplication and rebasing
a run with drops, kills and stalls must give the same finals, segment by segment, as a clean run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from bridge.audio import to_twilio_mulaw as read_mulaw_wav
from bridge.events import Word
from bridge.recognizers.base import (
    RecognizerConnectError,
    RecognizerEvent,
    RecognizerRejected,
    SpeechStarted,
    StreamOptions,
    Transcript,
)
from bridge.recognizers.deepgram.live import DeepgramRecognizer
from bridge.recognizers.resilience import ResilientStream, RetryPolicy
from bridge.testing import ScriptedDeepgramServer, scripted_finals
from tests.support import SHORT_CALL
from tests.support.faults import FaultProxy
from tests.support.streams import Run as _Run
from tests.support.streams import Segment

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = StreamOptions(call_sid="CAres", track="inbound")
BPS = 8000
#: These tests feed audio ~20x faster than real time, which no vendor ingests: pacing is off here and
#: tested against the rate-limited fake in ``test_pacing.py``.
FAST = RetryPolicy(keepalive_interval=0.15, backoff_base=0.02, backoff_cap=0.1, max_failures=6, failure_window=5.0,
                   max_ingest_rate=math.inf)  # fmt: skip
AUDIO = read_mulaw_wav(SHORT_CALL)[0][: int(6.3 * BPS)]
ORIGIN = 12.5

pytestmark = pytest.mark.timeout(60)

def expected(audio: bytes = AUDIO, origin: float = ORIGIN) -> list[Segment]:
    return [(round(origin + s, 3), round(origin + e, 3), t) for s, e, t in scripted_finals(audio)]


def Run(url: str, policy: RetryPolicy = FAST, api_key: str = "") -> _Run:
    """A track on the scripted Deepgram server at ``url`` (``tests/support/streams.py``)."""
    return _Run(DeepgramRecognizer(url, api_key=api_key), OPTIONS, policy=policy, origin=ORIGIN)


async def call(url: str, fault: Callable[[], Coroutine[Any, Any, None]] | None = None, **kw: object) -> Run:
    run = Run(url, **kw)  # type: ignore[arg-type]
    await run.start()
    injector = asyncio.create_task(fault()) if fault else None
    await run.feed(AUDIO)
    if injector is not None:
        await injector
    await run.close()
    return run


@pytest.fixture
async def server() -> AsyncIterator[ScriptedDeepgramServer]:
    async with ScriptedDeepgramServer() as s:
        yield s


async def test_clean_run_is_rebased_onto_the_call_clock(server: ScriptedDeepgramServer) -> None:
    run = await call(server.url)
    assert run.error is None
    assert run.finals == expected()
    assert run.state_names == ["connecting", "connected", "closed"]
    first = next(e for e in run.events if isinstance(e, Transcript) and e.is_final)
    assert first.words[0].start == ORIGIN and first.words[0].end == ORIGIN + 1.0
    partials = [e for e in run.events if isinstance(e, Transcript) and not e.is_final]
    assert partials and all(p.start >= ORIGIN for p in partials)
    assert any(isinstance(e, SpeechStarted) and e.timestamp >= ORIGIN for e in run.events)
    assert run.stream.stats.reconnects == 0 and run.stream.stats.dropped_seconds == 0
    assert bytes(server.connections[0].audio) == AUDIO


async def test_proxy_cut_mid_stream(server: ScriptedDeepgramServer) -> None:
    async with FaultProxy(server.port) as proxy:

        async def fault() -> None:
            await server.wait_for_audio(int(2.5 * BPS))
            proxy.cut()

        run = await call(proxy.url(), fault)
    assert run.error is None
    assert run.finals == expected()
    assert run.stream.stats.reconnects == 1
    assert run.stream.stats.replayed_seconds > 0
    assert run.stream.stats.dropped_seconds == 0
    assert run.state_names == ["connecting", "connected", "reconnecting", "connected", "closed"]


@pytest.mark.parametrize("before_final", [True, False])
@pytest.mark.parametrize("at", [2 * BPS, 2 * BPS + 1000, 3 * BPS - 1])
async def test_server_drops_the_connection(server: ScriptedDeepgramServer, at: int, before_final: bool) -> None:
    server.drop_after(at, before_final=before_final)
    run = await call(server.url)
    assert run.error is None
    assert run.finals == expected()
    assert run.stream.stats.reconnects == 1
    # The second connection started at the first byte not covered by a final (a window boundary).
    second = bytes(server.connections[1].audio)
    replay_from = len(AUDIO) - len(second)
    assert second == AUDIO[replay_from:]
    assert replay_from % BPS == 0 and at - BPS <= replay_from <= at


async def test_proxy_drop_after_bytes_repeatedly(server: ScriptedDeepgramServer) -> None:
    async with FaultProxy(server.port) as proxy:

        async def fault() -> None:
            for _ in range(3):
                proxy.drop_after(int(1.7 * BPS))
                await server.wait_for_audio(server.received_bytes + int(1.8 * BPS))

        run = await call(proxy.url(), fault)
    assert run.error is None
    assert run.finals == expected()
    assert run.stream.stats.reconnects >= 2


async def test_server_killed_and_restarted() -> None:
    async with ScriptedDeepgramServer() as server:

        async def fault() -> None:
            await server.wait_for_audio(int(1.5 * BPS))
            await server.stop()
            await asyncio.sleep(0.3)  # an outage: audio keeps arriving and is only buffered
            await server.start()

        run = await call(server.url, fault, policy=dataclasses.replace(FAST, max_failures=100))
    assert run.error is None
    assert run.finals == expected()
    assert run.stream.stats.reconnects == 1
    assert run.stream.stats.last_recovery_seconds >= 0.3


async def test_stall_then_recover(server: ScriptedDeepgramServer) -> None:
    async with FaultProxy(server.port) as proxy:

        async def fault() -> None:
            await server.wait_for_audio(2 * BPS)
            proxy.stall(0.5)

        run = await call(proxy.url(), fault)
    assert run.error is None
    assert run.finals == expected()


async def test_unexpected_close_code_reconnects(server: ScriptedDeepgramServer) -> None:
    async def fault() -> None:
        await server.wait_for_audio(3 * BPS)
        await server.close_all(1011, "NET-0000")

    run = await call(server.url, fault)
    assert run.error is None
    assert run.finals == expected()
    assert any(state == "reconnecting" and "NET-0000" in detail for state, detail in run.states)


async def test_long_silent_hold_is_kept_alive() -> None:
    """A 60 s hold, scaled down: the idle timeout is 1 s and the hold lasts three times that (the
    timeout is ten keepalive intervals, so a loaded box delaying one keepalive does not fail it)."""
    async with ScriptedDeepgramServer(idle_timeout=1.0) as server:
        run = Run(server.url, policy=dataclasses.replace(FAST, keepalive_interval=0.1))
        await run.start()
        await run.feed(AUDIO[: 2 * BPS])
        await asyncio.sleep(3.0)
        await run.feed(AUDIO[2 * BPS :])
        await run.close()
    assert run.error is None
    assert run.finals == expected()
    assert len(server.connections) == 1 and run.stream.stats.reconnects == 0
    assert server.connections[0].controls.count("KeepAlive") >= 10


async def test_rejected_key_fails_without_retrying() -> None:
    async with ScriptedDeepgramServer(api_key="right") as server:
        run = Run(server.url, api_key="wrong")
        with pytest.raises(RecognizerRejected):
            await run.start()
    assert server.rejected == 1
    assert run.state_names == ["connecting", "failed"]


async def test_rejected_on_reconnect_fails_and_surfaces(server: ScriptedDeepgramServer) -> None:
    async def fault() -> None:
        await server.wait_for_audio(2 * BPS)
        server.reject(401, "INVALID_AUTH")
        await server.close_all(1011, "NET-0000")

    run = await call(server.url, fault)
    assert isinstance(run.error, RecognizerRejected) and run.error.code == 401
    assert server.rejected == 1
    assert run.state_names[-1] == "failed"
    assert run.stream.stats.dropped_seconds > 0


async def test_repeated_failures_end_as_failed(server: ScriptedDeepgramServer) -> None:
    async def fault() -> None:
        await server.wait_for_audio(BPS)
        server.reject(503)
        await server.close_all(1011, "NET-0000")

    run = await call(server.url, fault)
    assert isinstance(run.error, RecognizerConnectError)
    assert server.rejected == FAST.max_failures - 1
    assert run.state_names[-1] == "failed"


async def test_transient_failure_at_start_retries() -> None:
    async with ScriptedDeepgramServer() as server:
        server.reject(503, times=2)
        run = await call(server.url)
    assert run.error is None
    assert run.finals == expected()
    assert run.state_names[:3] == ["connecting", "reconnecting", "reconnecting"]


async def test_bounded_buffer_counts_dropped_audio() -> None:
    policy = dataclasses.replace(FAST, backoff_cap=0.05, buffer_seconds=1.0)
    async with ScriptedDeepgramServer() as server:
        run = Run(server.url, policy=policy)
        await run.start()
        await run.feed(AUDIO[: 2 * BPS])
        await server.wait_for_audio(2 * BPS)
        await server.stop()
        await run.feed(AUDIO[2 * BPS : 5 * BPS], pace=0)  # 3 s during the outage; 1 s (+slack) is kept
        await server.start()
        await run.feed(AUDIO[5 * BPS :])
        await run.close()
    assert run.error is None
    stats = run.stream.stats
    assert 1.0 <= stats.dropped_seconds <= 2.5
    finals = run.finals
    assert finals[:2] == expected()[:2]  # nothing lost before the outage
    assert finals[-1][1] == round(ORIGIN + len(AUDIO) / BPS, 3)
    assert [s for s, _, _ in finals] == sorted(s for s, _, _ in finals)


# -- de-duplication, with an in-memory recognizer whose events are scripted ---------------------


class _ListStream:
    def __init__(self, events: list[RecognizerEvent]) -> None:
        self._events = events
        self.closed = asyncio.Event()

    async def send(self, audio: bytes) -> None:
        pass

    async def keepalive(self) -> None:
        pass

    async def finalize(self) -> None:
        pass

    async def close(self, timeout: float = 5.0) -> None:
        self.closed.set()

    async def events(self) -> AsyncIterator[RecognizerEvent]:
        for event in self._events:
            yield event
        await self.closed.wait()


class _ListRecognizer:
    name = "scripted"

    def __init__(self, events: list[RecognizerEvent]) -> None:
        self.events = events

    async def open(self, options: StreamOptions) -> _ListStream:
        return _ListStream(self.events)


def final(start: float, end: float, text: str) -> Transcript:
    words = tuple(
        Word(word=w, start=start + i * 0.1, end=start + (i + 1) * 0.1, punctuated_word=w)
        for i, w in enumerate(text.split())
    )
    return Transcript(is_final=True, start=start, end=end, text=text, words=words)


async def test_finals_are_deduplicated_by_time_never_by_text() -> None:
    events: list[RecognizerEvent] = [
        final(0.0, 1.0, "yes"),
        final(0.0, 1.0, "yes"),  # same span again: a duplicate
        final(0.2, 0.9, "other"),  # inside a covered span: a duplicate
        final(1.0, 2.0, "yes"),  # same word, later: kept
        final(1.8, 2.5, "a b c d e f g"),  # partly covered: the words after 2.0 remain
    ]
    stream = ResilientStream(_ListRecognizer(events), OPTIONS, origin=100.0, policy=FAST)
    await stream.start()
    await stream.send(b"\xff" * 20000)
    got: list[Transcript] = []

    async def collect() -> None:
        async for event in stream.events():
            assert isinstance(event, Transcript)
            got.append(event)

    reader = asyncio.create_task(collect())
    await asyncio.sleep(0.05)
    await stream.close(timeout=1)
    await reader
    assert [(e.start, e.end, e.text) for e in got] == [
        (100.0, 101.0, "yes"),
        (101.0, 102.0, "yes"),
        (102.0, 102.5, "c d e f g"),
    ]
    assert stream.stats.duplicate_finals == 2


async def test_regression_a_connection_lost_while_closing_is_not_taken_for_a_clean_end() -> None:
    """A recognizer that hangs as the call ends used to look like a clean close: the last words were
    lost without a trace. Now the loss is an error, the stream retries within the close deadline and
    what it could not get transcribed is recorded as a gap."""
    async with ScriptedDeepgramServer() as server:
        recognizer = DeepgramRecognizer(server.url, ping_interval=0.1, ping_timeout=0.2, open_timeout=0.3)
        run = _Run(recognizer, OPTIONS, policy=dataclasses.replace(FAST, max_failures=100), origin=ORIGIN)
        await run.start()
        await run.feed(AUDIO[: int(2.5 * BPS)])
        await server.wait_for_audio(int(2.5 * BPS))
        server.hang()
        await run.close(timeout=1.5)
    assert run.error is None and run.state_names[-1] == "closed"
    assert run.finals == expected()[:2]
    [gap] = run.stream.gaps
    assert (gap.start, gap.end, gap.reason) == (ORIGIN + 2.0, ORIGIN + 2.5, "closing")
    assert any(s == "reconnecting" for s in run.state_names)


@pytest.mark.parametrize(("chunk_seconds", "message_bytes"), [(0.1, 800), (0.06, 480), (0.0, 160)])
async def test_live_frames_are_coalesced_into_chunk_sized_messages(
    server: ScriptedDeepgramServer, chunk_seconds: float, message_bytes: int
) -> None:
    run = Run(server.url, policy=dataclasses.replace(FAST, send_chunk_seconds=chunk_seconds))
    await run.start()
    await run.feed_realtime(AUDIO[: 2 * BPS])
    await run.close()
    assert run.error is None
    sizes = server.connections[0].frames
    assert sum(sizes) == 2 * BPS  # nothing held back at the end, nothing sent twice
    assert max(sizes) == message_bytes and all(size % 160 == 0 for size in sizes)
    # The flush timer sends a short chunk when frames come late (a loaded box delays the feeder),
    # so only most messages are full ones; without coalescing none of them would be.
    assert sizes.count(message_bytes) >= 0.75 * len(sizes)


async def test_a_held_tail_is_sent_when_the_frames_stop(server: ScriptedDeepgramServer) -> None:
    """Three frames are less than a chunk: the flush timer sends them though no fourth comes."""
    run = Run(server.url, policy=dataclasses.replace(FAST, send_chunk_seconds=0.1))
    await run.start()
    await run.feed(AUDIO[:480])
    await asyncio.sleep(0.3)
    assert server.connections[0].frames == [480]
    await run.close()


async def test_finalize_sends_the_held_audio_first(server: ScriptedDeepgramServer) -> None:
    run = Run(server.url, policy=dataclasses.replace(FAST, send_chunk_seconds=0.25))
    await run.start()
    await run.feed(AUDIO[:480])
    await run.stream.finalize()
    await asyncio.sleep(0.1)
    conn = server.connections[0]
    assert conn.frames == [480] and conn.controls == ["Finalize"]
    assert run.finals == [(ORIGIN, round(ORIGIN + 0.06, 3), scripted_finals(AUDIO[:480])[0][2])]
    await run.close()


class _PushyStream(_ListStream):
    """Takes audio without waiting only every other time, as a connection whose transport pushes
    back now and then does; records what arrives by which path."""

    def __init__(self) -> None:
        super().__init__([])
        self.received = bytearray()
        self.paths: list[str] = []
        self._refuse = False

    def send_nowait(self, audio: bytes) -> bool:
        self._refuse = not self._refuse
        if self._refuse:
            return False
        self.received += audio
        self.paths.append("nowait")
        return True

    async def send(self, audio: bytes) -> None:
        self.received += audio
        self.paths.append("pump")


class _PushyRecognizer(_ListRecognizer):
    def __init__(self) -> None:
        super().__init__([])
        self.stream = _PushyStream()

    async def open(self, options: StreamOptions) -> _PushyStream:
        return self.stream


async def test_audio_the_connection_cannot_take_at_once_goes_out_through_the_pump_in_order_once() -> None:
    recognizer = _PushyRecognizer()
    stream = ResilientStream(recognizer, OPTIONS, policy=dataclasses.replace(FAST, send_chunk_seconds=0.06))
    await stream.start()
    audio = AUDIO[: 2 * BPS]
    for i in range(0, len(audio), 160):
        stream.send_nowait(audio[i : i + 160])
        await asyncio.sleep(0.002)
    await stream.close()
    assert bytes(recognizer.stream.received) == audio
    assert {"nowait", "pump"} <= set(recognizer.stream.paths)
