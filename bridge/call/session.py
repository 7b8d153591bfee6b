"""Call sessions: one per CallSid, owning its streams, recording and end.

The Twilio edge (:mod:`bridge.twilio.media`) hands each Media Stream to the
:class:`~bridge.call.manager.CallManager`, which finds or creates the :class:`CallSession` for its
CallSid. A call can be carried by several streams over time (Twilio reconnects with a new StreamSid,
or TwiML starts another ``<Stream>``), even two at once: they all feed the same session, each
stream's audio placed on the call's clock at the moment the stream started, so the transcript
continues. The call ends when its last open stream stops. A CallSid that comes back after its call
ended gets a new session that continues the old one (:class:`Resume`): its clock picks up where the
call's audio stopped (so final ids never collide) and its recording is appended to, never truncated.
Each track of a stream is a :class:`~bridge.call.pipeline.TrackPipeline`.

A recording that cannot be written (disk full, file size limit, permissions) never stops the
transcript: the call goes on and ends normally, and its record says ``recording: failed``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
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
from bridge.call.takeover import HANDOFF_PARAMETER, AudioWatch, Takeover, placement
from bridge.compliance.alerts import live_alerts, raise_alert
from bridge.events import Track
from bridge.metrics import Metrics
from bridge.options import CallOptions
from bridge.recognizers.base import Recognizer, StreamOptions
from bridge.recognizers.resilience import RetryPolicy
from bridge.redact.detector import kinds_for
from bridge.redact.live import LiveRedactor
from bridge.settings import Settings
from bridge.store.jobs import RecordingJob
from bridge.webhooks import CallEndedData, WebhookOutbox, new_event_id

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


@dataclasses.dataclass(frozen=True)
class Resume:
    """Where a call that comes back under its CallSid continues."""

    #: Unix time of the call's first start.
    started_at: float
    #: Call-clock second its audio had reached: the new session's clock starts there.
    audio_end: float


#: ``bridge_frame_handling_seconds`` times one media frame in this many.
FRAME_SAMPLE = 8


class StreamHandle:
    """What the Twilio edge talks to for one Media Stream (implements ``StreamHandler``)."""

    def __init__(
        self, session: CallSession, stream_sid: str, tracks: list[Track], origin: float, begin: float | None = None
    ) -> None:
        self.session = session
        self.stream_sid = stream_sid
        self.origin = origin
        self.origin_bytes = round(origin * SAMPLE_RATE)
        #: Call-clock second this stream's audio counts from: later than ``origin`` for a stream that
        #: replaces a draining instance's, whose audio before the cut is the call's (no audio twice).
        self.begin = origin if begin is None else begin
        self._begin_bytes = round(self.begin * SAMPLE_RATE)
        #: Call-clock byte from which the audio is a replacement stream's (:meth:`cut_at`), not ours.
        self._until_bytes: int | None = None
        self._at_cut: set[str] = set()
        #: Set once every track reached the cut.
        self.cut_reached = asyncio.Event()
        #: The stream's custom parameters without its token (what a replacement stream gets again).
        self.custom: dict[str, str] = {}
        #: Sees the audio while two streams overlap (:mod:`bridge.call.takeover`).
        self.watch: AudioWatch | None = None
        self.pipelines: dict[str, TrackPipeline] = {t: session.pipeline(t, self.begin) for t in tracks}
        metrics = session.manager.metrics
        # Per-frame work is the bridge's cost per call: look the labelled counters up once, and time
        # one frame in FRAME_SAMPLE (the histogram's quantiles are the same; its count is not frames).
        self._frame_counters = {t: metrics.frames.labels(t) for t in tracks}
        self._uncounted = dict.fromkeys(tracks, 0)  # frames not yet added to their counter
        self._frame_handling = metrics.frame_handling
        self._frames = 0
        self.closed = False
        #: Call-clock second up to which this stream delivered audio.
        self.audio_end = self.begin

    def place(self, origin: float) -> None:
        """Where this stream's timestamp 0 is on the call clock, found after it started."""
        self.origin = origin
        self.origin_bytes = round(origin * SAMPLE_RATE)

    def cut_at(self, second: float) -> None:
        """Audio from call-clock ``second`` on belongs to a replacement stream: stop there."""
        self._until_bytes = round(second * SAMPLE_RATE)
        if self.audio_end >= second:
            self.cut_reached.set()

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.pipelines.values()))

    async def on_media(self, track: Track, timestamp_ms: int, payload: bytes) -> None:
        self.on_media_nowait(track, timestamp_ms, payload)

    def on_media_nowait(self, track: Track, timestamp_ms: int, payload: bytes) -> None:
        """Every frame of the call, from the media socket's read callback: nothing here waits."""
        pipeline = self.pipelines.get(track)
        if pipeline is None or self.closed:
            return
        self._frames += 1
        timed = not self._frames % FRAME_SAMPLE
        t0 = time.perf_counter() if timed else 0.0
        pos = self.origin_bytes + timestamp_ms * (SAMPLE_RATE // 1000)  # on the call clock
        self._uncounted[track] += 1
        if timed:
            self._count_frames()
        if self.watch is not None:
            self.watch.feed(track, timestamp_ms, pos, payload)
        if pos < self._begin_bytes:  # heard by the stream this one replaces
            payload = payload[self._begin_bytes - pos :]
            pos = self._begin_bytes
        if self._until_bytes is not None and pos + len(payload) >= self._until_bytes:
            payload = payload[: max(0, self._until_bytes - pos)]
            self._at_cut.add(track)
            if len(self._at_cut) == len(self.pipelines):
                self.cut_reached.set()
        if not payload:
            return
        rec = self.session.recording
        if rec is None and self.session.held is not None:
            self.session.held.append((track, pos, payload))
        elif rec is not None:
            try:
                rec.write(track, pos, payload)
            except Exception as exc:  # the recording's own errors are handled inside; this is a bug
                log.exception("recording write failed", extra={"call_sid": self.session.call_sid})
                self.session.recording = None
                self.session.recording_failed(f"{type(exc).__name__}: {exc}")
        end = (pos + len(payload)) / SAMPLE_RATE
        if end > self.audio_end:
            self.audio_end = end
        pipeline.put(pos - self._begin_bytes, payload)
        if timed:
            self._frame_handling.observe(time.perf_counter() - t0)

    async def on_dtmf(self, digit: str) -> None:
        # Never the digit: a caller may key in a card number (docs/redaction.md).
        log.debug("dtmf digit received", extra={"call_sid": self.session.call_sid})

    async def on_mark(self, name: str) -> None:
        log.debug("mark %s", name, extra={"call_sid": self.session.call_sid})

    async def on_stop(self, *, clean: bool, reason: str) -> None:
        await self.session.stream_stopped(self, clean=clean, reason=reason)

    def _count_frames(self) -> None:
        """Add the frames seen since last time to ``bridge_frames_total`` (a counter's lock per frame
        costs more than the rest of the frame's bookkeeping)."""
        uncounted = self._uncounted
        for track, n in uncounted.items():
            if n:
                self._frame_counters[track].inc(n)
                uncounted[track] = 0

    async def close(self, timeout: float) -> None:
        if self.closed:
            return
        self.closed = True
        self._count_frames()
        await asyncio.gather(*(p.close(timeout) for p in self.pipelines.values()))


class CallSession:
    """One call: the streams that carried it, its recording, its transcript's end."""

    def __init__(self, manager: SessionHost, call_sid: str, resume: Resume | None = None) -> None:
        self.manager = manager
        self.call_sid = call_sid
        self.resume = resume
        self.started_at = resume.started_at if resume is not None else time.time()
        self._started_mono = time.monotonic()
        #: Call-clock second this session started at (0, or where a resumed call's audio stopped).
        self._clock_base = resume.audio_end if resume is not None else 0.0
        self.streams: list[StreamHandle] = []
        self.recording: CallRecording | None = None
        self.recording_path: Path | None = None
        #: Why the recording failed ("" while it is fine).
        self.recording_error = ""
        self.tracks: list[Track] = []
        #: The call's options (its latest stream's ``<Parameter>``s, validated by the manager).
        self.options = CallOptions()
        self.ended = False
        #: The compliance alert rules, run on each final.
        self.alerts = live_alerts(manager.settings.compliance_rules)
        #: Where the call's ``call.ended`` and ``alert`` webhooks are raised (nowhere without receivers).
        self.outbox = WebhookOutbox(manager.store, manager.settings.webhook_urls)
        #: Set when another instance carried this call live until now (see :mod:`bridge.call.handoff`).
        self.takeover: Takeover | None = None
        #: Recording frames held until the instance this call is handed from has closed the file.
        self.held: list[tuple[Track, int, bytes]] | None = None
        #: The call went on with another instance: ending this session does not end the call.
        self.handed_off = False
        #: Set once the session has ended (what a drain waits on for calls it cannot hand off).
        self.over = asyncio.Event()
        self._silence_base = self._clock_base
        self._grace: asyncio.TimerHandle | None = None
        self._ending: asyncio.Task[None] | None = None
        #: Masks card data before anything is stored or sent; finals may come out later (hold-back).
        self.redactor = LiveRedactor(frozenset(manager.settings.redact), self._store_final)

    @property
    def clock(self) -> float:
        """Seconds since the call started (the clock every event time is on)."""
        return self._clock_base + time.monotonic() - self._started_mono

    def elapsed(self) -> float:
        """Wall-clock seconds this session has lasted (what bounds the silence filled for gaps)."""
        return self.clock - self._silence_base

    @property
    def ending(self) -> bool:
        return self._ending is not None

    @property
    def audio_end(self) -> float:
        """Call-clock second up to which the call's streams delivered audio."""
        return max([self._clock_base, *(h.audio_end for h in self.streams)])

    @property
    def open_streams(self) -> list[StreamHandle]:
        return [h for h in self.streams if not h.closed]

    def recording_failed(self, error: str) -> None:
        """The recording stopped for good (``error`` says why); the call and its transcript go on."""
        if self.recording_error:
            return
        self.recording_error = error
        m = self.manager
        m.metrics.recording_failures.inc()
        log.error("recording failed (%s); the call goes on without it", error, extra={"call_sid": self.call_sid})
        store, sid = m.store, self.call_sid
        fields = {"recording": "failed", "recording_error": error[:300]}
        m.writer.call(sid, "recording_failed", lambda: store.update_call(sid, fields))

    def _open_recording(self, tracks: list[Track]) -> None:
        self.tracks = tracks
        try:
            rec = CallRecording.open(
                self.manager.settings.recording_dir, self.call_sid, tracks,
                elapsed=self.elapsed, on_failure=self.recording_failed,
            )  # fmt: skip
        except (OSError, ValueError) as exc:  # a path refused, or too many variants: no recording
            self.recording_failed(f"{type(exc).__name__}: {exc}")
            return
        self.recording, self.recording_path = rec, rec.path
        if rec.resumed_frames:
            log.info("continuing recording %s after %.1f s of earlier audio", rec.path.name,
                     rec.resumed_frames / SAMPLE_RATE, extra={"call_sid": self.call_sid})  # fmt: skip

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

    async def attach(
        self, start: Start, options: CallOptions | None = None, takeover: Takeover | None = None
    ) -> StreamHandle:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        info = start.start
        if options is not None:
            self.options = options
            self.redactor.kinds |= kinds_for(options.redact)  # a call may add kinds, never remove them
        tracks: list[Track] = [t for t in ("inbound", "outbound") if t in info.tracks] or ["inbound"]
        first = not self.streams
        # A new stream starts "now" on the call clock, and never before audio already heard.
        origin = round(self._clock_base if first else max(self.clock, self.audio_end), 3)
        begin = origin
        if takeover is not None and first:
            self.takeover = takeover
            self._silence_base = 0.0  # the call has lasted since its start, not since this session's
            origin, begin = placement(origin, takeover)
        params = dict(info.custom_parameters or {})
        store = self.manager.store
        custom = {k: v for k, v in params.items() if k not in ("token", HANDOFF_PARAMETER)}
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
        if self.takeover is not None and self.takeover.mode == "drain" and first:
            self.tracks, self.held = tracks, []  # the draining instance still writes the file
        elif self.recording is None and not self.recording_error:
            self._open_recording(tracks)
            if self.recording is not None and self.takeover is not None:
                # The instance before died: the file's frames are on the call clock, its gap is silence.
                self.recording.anchor(self.recording.resumed_frames)
            elif self.recording is not None:
                # The file continues at ``origin``: right after what an earlier session left in it.
                self.recording.anchor(round(origin * SAMPLE_RATE))
        handle = StreamHandle(self, info.stream_sid, tracks, origin, begin)
        handle.custom = custom
        self.streams.append(handle)
        await handle.start()
        return handle

    def release_held(self, *, at_cut: bool = True) -> None:
        """Continue the recording with the frames held: at the cut, where the instance this call was
        handed from closed it; or (``at_cut=False``: it never said so) on the call clock, a gap in silence."""
        held, self.held = self.held, None
        if held is None or self.recording is not None or self.recording_error or not self.streams:
            return
        self._open_recording(self.tracks)
        rec = self.recording
        if rec is None:
            return
        rec.anchor(round(self.streams[0].begin * SAMPLE_RATE) if at_cut else rec.resumed_frames)
        for track, pos, payload in held:
            rec.write(track, pos, payload)

    async def hand_off(self) -> None:
        """The call goes on with another instance: end this session (last finals stored, recording
        closed for the next instance to continue) without ending the call or queueing its recording."""
        self.handed_off = True
        await self.end("handed off")

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
        if self.takeover is not None and self.streams:  # the part another instance carried comes first
            before = self.takeover.coverage_before(track, self.streams[0].begin)
            served, gaps = before[0] + served, before[1] + gaps
        store = self.manager.store
        self.manager.writer.call(
            self.call_sid, "recognizer_state",
            lambda: store.set_recognizer_state(self.call_sid, track, state, served=served, gaps=gaps),
        )  # fmt: skip

    def emit(self, event: events.LiveEvent) -> None:
        shown = self.redactor.partial(event) if isinstance(event, events.Partial) else event
        if shown is not None:
            self.manager.writer.publish(shown)

    def emit_final(self, final: events.Final) -> None:
        self.redactor.final(final)

    def _store_final(self, final: events.Final) -> None:
        """A final the redactor released (masked): the only way a final reaches Redis, subscribers and
        the alert rules."""
        m = self.manager
        m.writer.submit(final)
        for alert in self.alerts.match(final):  # compliance alert rules, after the final (its seq)
            m.metrics.alerts.labels(alert.rule).inc()
            m.writer.call(self.call_sid, "alert", functools.partial(raise_alert, m.store, alert, self.outbox))

    async def stream_stopped(self, handle: StreamHandle, *, clean: bool, reason: str) -> None:
        # Keep this stream's last words in any case; the call ends with its last open stream.
        await handle.close(self.manager.close_timeout)
        store, sid = self.manager.store, self.call_sid
        self.manager.writer.call(sid, "stream_closed", lambda: store.stream_closed(sid, handle.stream_sid))
        if self.ending:
            return
        others = self.open_streams
        if others:
            log.info("stream %s stopped (%s); %d other stream(s) of the call still running", handle.stream_sid,
                     reason, len(others), extra={"call_sid": self.call_sid})  # fmt: skip
            return
        if clean:
            await self.end(reason or "stop")
            return
        # The socket dropped without Twilio's stop: wait for a new stream.
        log.warning("media stream dropped (%s); waiting for a reconnect", reason, extra={"call_sid": self.call_sid})
        if self._grace is None:
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
        """Never raises: whatever fails, the call is marked ended and nothing stays registered."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        m = self.manager
        duration = self.clock
        try:
            results = await asyncio.gather(*(h.close(m.close_timeout) for h in self.streams), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    log.error("closing a stream failed: %r", r, extra={"call_sid": self.call_sid})
            for pipeline in self.streams[-1].pipelines.values() if self.streams else ():
                self._record_coverage(pipeline.track, pipeline.stream.state)  # the last word on spans and gaps
            self.ended = True
            self.release_held(at_cut=False)  # a handoff that never completed: keep the audio held so far
            job = self._close_recording()
            if self.handed_off:  # the next instance continues the file and queues it at the call's end
                job = None
            if job is not None:
                duration = job.duration
                m.writer.call(self.call_sid, "recording_job", lambda: m.store.enqueue_recording(job))
                m.metrics.recordings.inc()
        except Exception:
            log.exception("ending the call failed; marking it ended anyway", extra={"call_sid": self.call_sid})
        finally:
            self.redactor.flush()  # finals held back for an open digit run go out before the call ends
            self.ended = True
            ended_at = time.time()
            audio_end = round(self.audio_end, 3)
            store, sid = m.store, self.call_sid
            if not self.handed_off:  # the call goes on with another instance: not ended, no webhook
                m.writer.call(sid, "call_ended", lambda: store.call_ended(sid, ended_at=ended_at, reason=reason,
                                                                          audio_end=audio_end))  # fmt: skip
                ended = CallEndedData(started_at=self.started_at, ended_at=ended_at, duration=round(duration, 3),
                                      reason=reason)  # fmt: skip
                event_id = new_event_id(f"ended:{sid}:{ended_at}")
                m.writer.call(sid, "webhook", lambda: self.outbox.enqueue("call.ended", sid, ended, event_id=event_id))
            m.forget(self)
            self.over.set()
        if not await m.writer.flush(m.close_timeout):
            log.warning("Redis is behind: this call's last writes are still queued", extra={"call_sid": self.call_sid})
        log.info("call ended (%s), %.1f s", reason, duration, extra={"call_sid": self.call_sid})

    def _close_recording(self) -> RecordingJob | None:
        """Finalise the recording; its job, unless it failed (a partial file is not a compliance record)."""
        rec, path = self.recording, self.recording_path
        if rec is None or path is None:
            return None
        duration = rec.close()
        if rec.failed or self.recording_error:
            log.warning("recording failed: no batch job queued (%.1f s kept in %s)", duration, path.name,
                        extra={"call_sid": self.call_sid})  # fmt: skip
            return None
        return RecordingJob(
            call_sid=self.call_sid,
            path=str(path),
            format="wav",
            encoding="mulaw",
            sample_rate=SAMPLE_RATE,
            channels=rec.channels,
            tracks=list(self.tracks),
            duration=round(duration, 3),
            created_at=time.time(),
            source="stream",
        )


__all__ = ["CallSession", "FinalsWriterLike", "Resume", "SessionHost", "StreamHandle"]
