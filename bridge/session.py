"""Call sessions: one per CallSid, owning its tracks, recognizer streams, recording and end.

The Twilio edge (:mod:`bridge.media_stream`) hands each Media Stream to :class:`CallManager`, which
finds or creates the :class:`CallSession` for its CallSid. A call can be carried by several streams
over time (Twilio reconnects with a new StreamSid): they all feed the same session, each stream's
audio placed on the call's clock at the moment the stream started, so the transcript continues.

Per track, a :class:`TrackPipeline` keeps the recognizer's audio position equal to Twilio's
timestamps (gaps filled with mu-law silence, overlaps trimmed), so recognizer times are call times.
Reconnect, replay and de-duplication are not done here: they live in :mod:`bridge.resilience`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bridge import events
from bridge.events import Track
from bridge.jobs import RecordingJob
from bridge.media_stream import StreamHandler, StreamRejected
from bridge.metrics import Metrics, SendClock
from bridge.recognizer import (
    Recognizer,
    RecognizerError,
    StreamOptions,
    Transcript,
    UtteranceEnded,
)
from bridge.recording import SAMPLE_RATE, CallRecording
from bridge.resilience import ResilientStream, RetryPolicy
from bridge.settings import Settings

if TYPE_CHECKING:
    from bridge.store import Store
    from bridge.twilio_models import Start

log = logging.getLogger(__name__)

class FinalsWriterLike(Protocol):
    """What the session needs from the store's write-behind writer (see :mod:`bridge.store`)."""

    def submit(self, final: events.Final) -> None: ...
    def publish(self, event: events.LiveEvent) -> None: ...
    def call(self, call_sid: str, what: str, write: Callable[[], Awaitable[object]]) -> None: ...
    async def flush(self, timeout: float | None = None) -> bool: ...


#: How long a call whose stream dropped (no Twilio ``stop``) waits for a new stream before it ends.
STREAM_GRACE_SECONDS = 10.0
#: A gap larger than this in Twilio timestamps is not filled sample by sample in one go.
_FILL_CHUNK = SAMPLE_RATE
#: Larger timestamp leaps are treated as bogus rather than filled with silence.
_MAX_GAP_BYTES = 600 * SAMPLE_RATE


class TrackPipeline:
    """One track of one stream: audio to the recognizer, recognizer events to the store."""

    def __init__(self, session: CallSession, track: Track, origin: float) -> None:
        self.session = session
        self.track = track
        self.origin = origin
        self._reported: dict[str, float] = {}
        self._was_reconnecting = False
        s = session.manager.settings
        self.options = StreamOptions(
            call_sid=session.call_sid,
            track=track,
            language=s.language,
            model=s.recognizer_model,
            endpointing_ms=s.endpointing_ms,
            utterance_end_ms=s.utterance_end_ms,
        )
        self.stream = ResilientStream(
            session.manager.recognizer,
            self.options,
            origin=origin,
            on_state=self._on_state,
            policy=session.manager.retry_policy,
        )
        self.sent = 0  # bytes of this track sent to the recognizer since the stream's start
        self.clock = SendClock()
        self.failed = False
        self._consumer: asyncio.Task[None] | None = None
        self._first_partial_seen = False

    async def start(self) -> None:
        try:
            await self.stream.start()
        except RecognizerError as exc:
            self._fail(exc)
            return
        self._consumer = asyncio.create_task(self._consume(), name=f"consume-{self.session.call_sid}-{self.track}")

    def _fail(self, exc: BaseException) -> None:
        self.failed = True
        self.session.manager.metrics.recognizer_failures.inc()
        log.error(
            "recognizer failed for %s track of %s: %s",
            self.track,
            self.session.call_sid,
            exc,
            extra={"call_sid": self.session.call_sid},
        )
        self._on_state("failed", str(exc))

    def _on_state(self, state: events.RecognizerState, detail: str) -> None:
        stream = getattr(self, "stream", None)  # None while the stream is being built
        if stream is not None:
            if state == "connected" and self._was_reconnecting and stream.stats.last_recovery_seconds:
                self.session.manager.metrics.recovery_seconds.observe(stream.stats.last_recovery_seconds)
            self._export_stats()
        self._was_reconnecting = state == "reconnecting"
        self.session.recognizer_state(self.track, state, detail)

    async def feed(self, offset_bytes: int, payload: bytes) -> None:
        """Send ``payload`` found at byte ``offset_bytes`` of this stream's track."""
        if self.failed:
            return
        if offset_bytes - self.sent > _MAX_GAP_BYTES:
            # A timestamp leap no real stream makes: don't synthesize that much silence.
            log.warning("ignoring a %.0f s timestamp leap on %s", (offset_bytes - self.sent) / SAMPLE_RATE,
                        self.track, extra={"call_sid": self.session.call_sid})
            offset_bytes = self.sent
        if offset_bytes > self.sent:
            gap = offset_bytes - self.sent
            while gap > 0:  # a lost or late frame: keep the recognizer's clock on Twilio's
                n = min(gap, _FILL_CHUNK)
                await self._send(b"\xff" * n)
                gap -= n
        elif offset_bytes < self.sent:
            payload = payload[self.sent - offset_bytes :]
        if payload:
            await self._send(payload)

    async def _send(self, audio: bytes) -> None:
        await self.stream.send(audio)
        self.sent += len(audio)
        self.clock.sent(self.origin + self.sent / SAMPLE_RATE)

    async def _consume(self) -> None:
        session = self.session
        metrics = session.manager.metrics
        try:
            async for ev in self.stream.events():
                if isinstance(ev, Transcript):
                    text = ev.text.strip()
                    if not ev.is_final:
                        if not text:
                            continue
                        if not self._first_partial_seen and self.clock.first_sent is not None:
                            self._first_partial_seen = True
                            metrics.first_partial.observe(time.monotonic() - self.clock.first_sent)
                        lat = self.clock.latency(ev.end)
                        if lat is not None:
                            metrics.partial_latency.observe(lat)
                        metrics.partials.inc()
                        session.emit(
                            events.Partial(
                                call_sid=session.call_sid,
                                track=self.track,
                                start=ev.start,
                                end=ev.end,
                                text=text,
                            )
                        )
                    elif text:
                        lat = self.clock.latency(ev.end)
                        if lat is not None:
                            metrics.final_lag.observe(lat)
                        session.emit_final(
                            events.Final(
                                call_sid=session.call_sid,
                                id=events.final_id(self.track, ev.start),
                                track=self.track,
                                start=round(ev.start, 3),
                                end=round(ev.end, 3),
                                text=text,
                                confidence=ev.confidence,
                                words=list(ev.words),
                                speech_final=ev.speech_final,
                            )
                        )
                elif isinstance(ev, UtteranceEnded):
                    session.emit(
                        events.UtteranceEnd(
                            call_sid=session.call_sid,
                            track=self.track,
                            end=ev.last_word_end,
                        )
                    )
        except RecognizerError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not take the call down with it
            log.exception("recognizer consumer crashed", extra={"call_sid": session.call_sid})
            self._fail(exc)
        finally:
            self._export_stats()

    def _export_stats(self) -> None:
        """Move the resilience counters' growth into the Prometheus counters (on every state change)."""
        stats = self.stream.stats
        m = self.session.manager.metrics
        for name, counter in (
            ("reconnects", m.reconnects),
            ("replayed_seconds", m.replayed_seconds),
            ("dropped_seconds", m.dropped_audio_seconds),
        ):
            value = float(getattr(stats, name, 0) or 0)
            delta = value - self._reported.get(name, 0.0)
            if delta > 0:
                counter.inc(delta)
                self._reported[name] = value

    async def close(self, timeout: float) -> None:
        """Finalize and wait (bounded) for the last finals, so a call's last words are kept."""
        if not self.failed:
            try:
                await self.stream.close(timeout=timeout)
            except RecognizerError as exc:
                log.warning("closing recognizer stream: %s", exc, extra={"call_sid": self.session.call_sid})
            except Exception:
                log.exception("closing recognizer stream failed", extra={"call_sid": self.session.call_sid})
        if self._consumer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._consumer), timeout=timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._consumer
        self._export_stats()


class StreamHandle:
    """What the Twilio edge talks to for one Media Stream (implements ``StreamHandler``)."""

    def __init__(self, session: CallSession, stream_sid: str, tracks: list[Track], origin: float) -> None:
        self.session = session
        self.stream_sid = stream_sid
        self.origin = origin
        self.origin_bytes = round(origin * SAMPLE_RATE)
        self.pipelines: dict[str, TrackPipeline] = {t: TrackPipeline(session, t, origin) for t in tracks}
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

    def __init__(self, manager: CallManager, call_sid: str) -> None:
        self.manager = manager
        self.call_sid = call_sid
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.streams: list[StreamHandle] = []
        self.recording: CallRecording | None = None
        self.recording_path: Path | None = None
        self.tracks: list[Track] = []
        self.ended = False
        self._grace: asyncio.TimerHandle | None = None
        self._ending: asyncio.Task[None] | None = None

    @property
    def clock(self) -> float:
        """Seconds since the call started (the clock every event time is on)."""
        return time.monotonic() - self._started_mono

    async def attach(self, start: Start) -> StreamHandle:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        info = start.start
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

    def recognizer_state(self, track: Track, state: events.RecognizerState, detail: str) -> None:
        self.emit(events.RecognizerStatus(call_sid=self.call_sid, track=track, state=state, detail=detail))
        store = self.manager.store
        self.manager.writer.call(
            self.call_sid, "recognizer_state", lambda: store.set_recognizer_state(self.call_sid, track, state)
        )

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


class CallManager:
    """Every call this bridge instance carries (``app.state.calls``; the edge's ``StreamOpener``)."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        recognizer: Recognizer,
        metrics: Metrics,
        writer: FinalsWriterLike,
        retry_policy: RetryPolicy | None = None,
        close_timeout: float = 10.0,
        stream_grace: float = STREAM_GRACE_SECONDS,
    ) -> None:
        self.settings = settings
        self.store = store
        self.recognizer = recognizer
        self.metrics = metrics
        self.writer = writer
        self.retry_policy = retry_policy or RetryPolicy()
        self.close_timeout = close_timeout
        self.stream_grace = stream_grace
        self.sessions: dict[str, CallSession] = {}
        self.draining = False
        self._tasks: set[asyncio.Task[object]] = set()

    async def open_stream(self, start: Start) -> StreamHandler:
        if self.draining:
            raise StreamRejected(1013, "bridge is draining; reconnect to another instance")
        call_sid = start.call_sid
        session = self.sessions.get(call_sid)
        if session is None or session.ended:
            session = CallSession(self, call_sid)
            self.sessions[call_sid] = session
            self.metrics.calls_total.inc()
            self.metrics.active_calls.set(len(self.sessions))
        return await session.attach(start)

    def forget(self, session: CallSession) -> None:
        if self.sessions.get(session.call_sid) is session:
            del self.sessions[session.call_sid]
        self.metrics.active_calls.set(len(self.sessions))

    def background(self, coro: Coroutine[object, object, object]) -> None:
        """Run a coroutine detached from the media path, keeping a reference until it is done."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Refuse new streams and end every call this instance carries, within ``timeout``."""
        self.draining = True
        sessions = list(self.sessions.values())
        if sessions:
            log.info("draining %d calls", len(sessions))
            await asyncio.wait(
                [asyncio.create_task(s.end("bridge shutdown")) for s in sessions], timeout=timeout
            )
        await self.writer.flush(timeout)


__all__ = ["CallManager", "CallSession", "FinalsWriterLike", "StreamHandle", "TrackPipeline"]
