"""Call sessions: one per CallSid, owning its streams, recording and end.

The Twilio edge (:mod:`bridge.twilio.media`) hands each Media Stream to the
:class:`~bridge.call.manager.CallManager`, which finds or creates the :class:`CallSession` for its
CallSid. A call can be carried by several streams over time (Twilio reconnects with a new StreamSid):
they all feed the same session, each stream's audio placed on the call's clock at the moment the
stream started, so the transcript continues. Each track of a stream is a
:class:`~bridge.call.pipeline.TrackPipeline`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import msgspec

from bridge import events
from bridge.audio import SAMPLE_RATE
from bridge.call.pipeline import TrackPipeline
from bridge.call.recording import CallRecording
from bridge.events import Track
from bridge.metrics import Metrics
from bridge.options import CallOptions
from bridge.recognizers.base import Recognizer, StreamOptions
from bridge.recognizers.resilience import RetryPolicy
from bridge.settings import Settings
from bridge.store.jobs import RecordingJob

if TYPE_CHECKING:
    from bridge.store import Store
    from bridge.twilio.models import Start

log = logging.getLogger(__name__)


class FinalsWriterLike(Protocol):
    """What the session needs from the store's write-behind writer (see :mod:`bridge.store.writeback`)."""

    def submit(self, final: events.Final) -> None: ...
    def publish(self, event: events.LiveEvent) -> None: ...
    def call(self, call_sid: str, what: str, write: Callable[[], Awaitable[object]]) -> None: ...
    async def flush(self, timeout: float | None = None) -> bool: ...


class SessionHost(Protocol):
    """What a session needs of the instance that carries it (:class:`bridge.call.manager.CallManager`)."""

    settings: Settings
    store: Store
    metrics: Metrics
    writer: FinalsWriterLike
    retry_policy: RetryPolicy
    close_timeout: float
    stream_grace: float

    def forget(self, session: CallSession) -> None: ...

    def recognizers_for(self, options: CallOptions) -> tuple[Recognizer, Recognizer | None]: ...

    def background(self, coro: Coroutine[object, object, object]) -> None: ...


class StreamHandle:
    """What the Twilio edge talks to for one Media Stream (implements ``StreamHandler``)."""

    def __init__(self, session: CallSession, stream_sid: str, tracks: list[Track], origin: float) -> None:
        self.session = session
        self.stream_sid = stream_sid
        self.origin = origin
        self.origin_bytes = round(origin * SAMPLE_RATE)
        self.pipelines: dict[str, TrackPipeline] = {t: session.pipeline(t, origin) for t in tracks}
        self.closed = False
        #: Call-clock second up to which this stream delivered audio.
        self.audio_end = origin

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.pipelines.values()))

    async def on_media(self, track: Track, timestamp_ms: int, payload: bytes) -> None:
        pipeline = self.pipelines.get(track)
        if pipeline is None or self.closed:
            return
        t0 = time.perf_counter()
        offset = timestamp_ms * (SAMPLE_RATE // 1000)
        self.session.manager.metrics.frames.labels(track).inc()
        rec = self.session.recording
        if rec is not None:
            rec.write(track, self.origin_bytes + offset, payload)
        end = self.origin + (offset + len(payload)) / SAMPLE_RATE
        if end > self.audio_end:
            self.audio_end = end
        await pipeline.feed(offset, payload)
        self.session.manager.metrics.frame_handling.observe(time.perf_counter() - t0)

    async def on_dtmf(self, digit: str) -> None:
        log.info("dtmf %s", digit, extra={"call_sid": self.session.call_sid})

    async def on_mark(self, name: str) -> None:
        log.debug("mark %s", name, extra={"call_sid": self.session.call_sid})

    async def on_stop(self, *, clean: bool, reason: str) -> None:
        await self.session.stream_stopped(self, clean=clean, reason=reason)

    async def close(self, timeout: float) -> None:
        if self.closed:
            return
        self.closed = True
        await asyncio.gather(*(p.close(timeout) for p in self.pipelines.values()))


class CallSession:
    """One call: the streams that carried it, its recording, its transcript's end."""

    def __init__(self, manager: SessionHost, call_sid: str) -> None:
        self.manager = manager
        self.call_sid = call_sid
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.streams: list[StreamHandle] = []
        self.recording: CallRecording | None = None
        self.recording_path: Path | None = None
        self.tracks: list[Track] = []
        #: The call's options (its latest stream's ``<Parameter>``s, validated by the manager).
        self.options = CallOptions()
        self.ended = False
        self._grace: asyncio.TimerHandle | None = None
        self._ending: asyncio.Task[None] | None = None

    @property
    def clock(self) -> float:
        """Seconds since the call started (the clock every event time is on)."""
        return time.monotonic() - self._started_mono

    def pipeline(self, track: Track, origin: float) -> TrackPipeline:
        """A pipeline for one track of a stream starting at ``origin`` on the call clock."""
        m = self.manager
        s = m.settings
        o = self.options
        endpointing = s.endpointing_ms if o.endpointing is None else (o.endpointing or None)
        options = StreamOptions(
            call_sid=self.call_sid,
            track=track,
            language=o.language or s.language,
            endpointing_ms=endpointing,
            utterance_end_ms=o.utterance_end or s.utterance_end_ms,
            keyterms=o.keyterms,
        )
        recognizer, fallback = m.recognizers_for(o)
        return TrackPipeline(
            call_sid=self.call_sid, track=track, origin=origin, recognizer=recognizer, fallback=fallback,
            options=options, out=self, metrics=m.metrics, policy=m.retry_policy,
        )  # fmt: skip

    async def attach(self, start: Start, options: CallOptions | None = None) -> StreamHandle:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        info = start.start
        if options is not None:
            self.options = options
        tracks: list[Track] = [t for t in ("inbound", "outbound") if t in info.tracks] or ["inbound"]
        first = not self.streams
        # A new stream starts "now" on the call clock, and never before audio already heard.
        origin = 0.0 if first else round(max(self.clock, max(h.audio_end for h in self.streams)), 3)
        if self.recording is None:
            self.tracks = tracks
            directory = self.manager.settings.recording_dir
            self.recording_path = (directory / f"{self.call_sid}.wav").resolve()
            self.recording = CallRecording(self.recording_path, tracks)
        handle = StreamHandle(self, info.stream_sid, tracks, origin)
        self.streams.append(handle)
        params = dict(info.custom_parameters or {})
        store = self.manager.store
        custom = {k: v for k, v in params.items() if k != "token"}
        self.manager.writer.call(
            self.call_sid,
            "call_started",
            lambda: store.call_started(
                self.call_sid,
                stream_sid=info.stream_sid,
                tracks=list(tracks),
                started_at=self.started_at,
                account_sid=info.account_sid,
                from_number=params.get("From", ""),
                to_number=params.get("To", ""),
                custom=custom,
            ),
        )
        await handle.start()
        return handle

    def recognizer_state(self, status: events.RecognizerStatus) -> None:
        self.emit(status)
        self._record_coverage(status.track, status.state)

    def _record_coverage(self, track: Track, state: events.RecognizerState) -> None:
        """Record a track's recognizer state and, over all of the call's streams, which recognizer
        served which span of it and which spans were not transcribed live."""
        copy = msgspec.structs.replace
        pipelines = [p for h in self.streams for p in h.pipelines.values() if p.track == track]
        served = [copy(span) for p in pipelines for span in p.stream.served]
        gaps = [copy(gap) for p in pipelines for gap in p.stream.gaps]
        store = self.manager.store
        self.manager.writer.call(
            self.call_sid, "recognizer_state",
            lambda: store.set_recognizer_state(self.call_sid, track, state, served=served, gaps=gaps),
        )  # fmt: skip

    def emit(self, event: events.LiveEvent) -> None:
        self.manager.writer.publish(event)

    def emit_final(self, final: events.Final) -> None:
        self.manager.writer.submit(final)

    async def stream_stopped(self, handle: StreamHandle, *, clean: bool, reason: str) -> None:
        if clean:
            await self.end(reason or "stop")
            return
        # The socket dropped without Twilio's stop: keep the last words, then wait for a new stream.
        log.warning("media stream dropped (%s); waiting for a reconnect", reason, extra={"call_sid": self.call_sid})
        await handle.close(self.manager.close_timeout)
        loop = asyncio.get_running_loop()
        self._grace = loop.call_later(
            self.manager.stream_grace,
            lambda: self.manager.background(self.end("stream lost")),
        )

    async def end(self, reason: str) -> None:
        """End the call once: last finals, recording closed and queued, call marked ended."""
        if self._ending is None:
            self._ending = asyncio.create_task(self._end(reason))
        await asyncio.shield(self._ending)

    async def _end(self, reason: str) -> None:
        if self._grace is not None:
            self._grace.cancel()
        timeout = self.manager.close_timeout
        await asyncio.gather(*(h.close(timeout) for h in self.streams))
        for pipeline in self.streams[-1].pipelines.values() if self.streams else ():
            self._record_coverage(pipeline.track, pipeline.stream.state)  # the last word on spans and gaps
        self.ended = True
        duration = self.clock
        job: RecordingJob | None = None
        if self.recording is not None and self.recording_path is not None:
            duration = self.recording.close()
            job = RecordingJob(
                call_sid=self.call_sid,
                path=str(self.recording_path),
                format="wav",
                encoding="mulaw",
                sample_rate=SAMPLE_RATE,
                channels=self.recording.channels,
                tracks=list(self.tracks),
                duration=round(duration, 3),
                created_at=time.time(),
                source="stream",
            )
        ended_at = time.time()
        store = self.manager.store
        writer = self.manager.writer
        if job is not None:
            recording_job = job
            writer.call(self.call_sid, "recording_job", lambda: store.enqueue_recording(recording_job))
            self.manager.metrics.recordings.inc()
        writer.call(self.call_sid, "call_ended", lambda: store.call_ended(self.call_sid, ended_at=ended_at,
                                                                          reason=reason))
        self.manager.forget(self)
        if not await writer.flush(timeout):
            log.warning("Redis is behind: this call's last writes are still queued", extra={"call_sid": self.call_sid})
        log.info("call ended (%s), %.1f s", reason, duration, extra={"call_sid": self.call_sid})



__all__ = ["CallSession", "FinalsWriterLike", "SessionHost", "StreamHandle"]
