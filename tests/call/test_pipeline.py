"""``TrackPipeline`` on its own: an in-memory recognizer, no bridge, no socket.

The pipeline owns three things: keeping the recognizer's audio on Twilio's clock (gaps filled with
mu-law silence, overlaps trimmed, bogus leaps ignored), turning recognizer results into live events
on the call clock, and reporting recognizer state and latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from prometheus_client import generate_latest

from bridge import events
from bridge.call.pipeline import MAX_GAP_BYTES, TrackPipeline
from bridge.events import Track
from bridge.metrics import Metrics
from bridge.recognizers.base import (
    RecognizerEvent,
    RecognizerRejected,
    StreamOptions,
    Transcript,
    UtteranceEnded,
)
from bridge.recognizers.resilience import RetryPolicy

_END = object()
BPS = 8000


class CountingStream:
    """Every full second of audio is a final ("s<N>"), with a partial at each half second."""

    def __init__(self) -> None:
        self.audio = bytearray()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._final_at = 0

    async def send(self, audio: bytes) -> None:
        before = len(self.audio)
        self.audio += audio
        for mark in range(before // (BPS // 2) + 1, len(self.audio) // (BPS // 2) + 1):
            end = mark * (BPS // 2)
            if mark % 2:
                self._queue.put_nowait(Transcript(is_final=False, start=self._final_at / BPS, end=end / BPS,
                                                  text="partial words"))  # fmt: skip
            else:
                self._final(end)

    def _final(self, end: int) -> None:
        start, self._final_at = self._final_at, end
        self._queue.put_nowait(Transcript(is_final=True, start=start / BPS, end=end / BPS, text=f"s{end // BPS}",
                                          speech_final=True))  # fmt: skip
        self._queue.put_nowait(UtteranceEnded(last_word_end=end / BPS))

    async def keepalive(self) -> None:
        pass

    async def finalize(self) -> None:
        if len(self.audio) > self._final_at:
            self._final(len(self.audio))

    async def close(self, timeout: float = 5.0) -> None:
        await self.finalize()
        self._queue.put_nowait(_END)

    async def events(self) -> AsyncIterator[RecognizerEvent]:
        while (item := await self._queue.get()) is not _END:
            yield item  # type: ignore[misc]


class FakeRecognizer:
    name = "fake"

    def __init__(self, *, reject: bool = False) -> None:
        self.reject = reject
        self.streams: list[CountingStream] = []

    async def open(self, options: StreamOptions) -> CountingStream:
        if self.reject:
            raise RecognizerRejected("bad key", code=401)
        self.streams.append(CountingStream())
        return self.streams[-1]


class Collector:
    """The call side of a pipeline: what it emitted, stored and reported."""

    def __init__(self) -> None:
        self.events: list[events.LiveEvent] = []
        self.finals: list[events.Final] = []
        self.states: list[tuple[Track, str, str]] = []

    def emit(self, event: events.LiveEvent) -> None:
        self.events.append(event)

    def emit_final(self, final: events.Final) -> None:
        self.finals.append(final)

    def recognizer_state(self, status: events.RecognizerStatus) -> None:
        self.states.append((status.track, status.state, status.detail))


def _pipeline(recognizer: FakeRecognizer, out: Collector, metrics: Metrics, origin: float = 0.0) -> TrackPipeline:
    options = StreamOptions(call_sid="CA1", track="inbound")
    return TrackPipeline(call_sid="CA1", track="inbound", origin=origin, recognizer=recognizer, options=options,
                         out=out, metrics=metrics, policy=RetryPolicy(keepalive_interval=60))  # fmt: skip


def _metric(metrics: Metrics, name: str) -> float:
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def test_audio_stays_on_twilios_clock() -> None:
    rec, out, metrics = FakeRecognizer(), Collector(), Metrics()
    p = _pipeline(rec, out, metrics)
    await p.start()
    frame = bytes(range(160))
    await p.feed(0, frame)  # 0-20 ms
    await p.feed(480, frame)  # 60-80 ms: 40 ms lost, filled with silence
    await p.feed(560, frame)  # 70-90 ms: overlaps 10 ms, only the new 10 ms are sent
    await p.close(2.0)
    (stream,) = rec.streams
    assert bytes(stream.audio) == frame + b"\xff" * 320 + frame + frame[80:]
    assert p.sent == 720


async def test_a_bogus_timestamp_leap_is_not_filled() -> None:
    rec, out = FakeRecognizer(), Collector()
    p = _pipeline(rec, out, Metrics())
    await p.start()
    await p.feed(0, b"\x01" * 160)
    await p.feed(160 + MAX_GAP_BYTES + 8000, b"\x02" * 160)  # an 11-minute jump: logged, not synthesized
    await p.close(2.0)
    assert bytes(rec.streams[0].audio) == b"\x01" * 160 + b"\x02" * 160


async def test_results_become_live_events_on_the_call_clock() -> None:
    rec, out, metrics = FakeRecognizer(), Collector(), Metrics()
    p = _pipeline(rec, out, metrics, origin=30.0)  # a second stream of the call, started at 30 s
    await p.start()
    for i in range(0, 2 * BPS + 800, 160):  # 2.1 s of audio
        await p.feed(i, b"\x10" * 160)
    await p.close(2.0)
    assert [(f.id, f.start, f.end, f.text) for f in out.finals] == [
        ("inbound-0000030000", 30.0, 31.0, "s1"),
        ("inbound-0000031000", 31.0, 32.0, "s2"),
        ("inbound-0000032000", 32.0, 32.1, "s2"),  # the close flushed the last 100 ms
    ]
    partials = [e for e in out.events if isinstance(e, events.Partial)]
    assert [(e.start, e.end) for e in partials] == [(30.0, 30.5), (31.0, 31.5)]
    assert [e.end for e in out.events if isinstance(e, events.UtteranceEnd)] == [31.0, 32.0, 32.1]
    assert [s for _, s, _ in out.states] == ["connecting", "connected", "closed"]
    assert _metric(metrics, "bridge_partials_total") == 2
    assert _metric(metrics, "bridge_final_lag_seconds_count") == 3
    assert _metric(metrics, "bridge_time_to_first_partial_seconds_count") == 1


async def test_a_rejected_recognizer_fails_the_track_and_says_so() -> None:
    rec, out, metrics = FakeRecognizer(reject=True), Collector(), Metrics()
    p = _pipeline(rec, out, metrics)
    await p.start()
    assert p.failed
    await p.feed(0, b"\x10" * 160)  # dropped quietly: the call goes on without this track's words
    await p.close(1.0)
    assert out.states[-1][1] == "failed" and "bad key" in out.states[-1][2]
    assert [s for _, s, _ in out.states].count("failed") == 1  # regression: a rejection was reported twice
    assert _metric(metrics, "bridge_recognizer_failures_total") == 1
    assert out.finals == []
