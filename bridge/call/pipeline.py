"""One track of one media stream: audio to the recognizer, recognizer events to the call.

A :class:`TrackPipeline` keeps the recognizer's audio position equal to Twilio's timestamps (a lost
or late frame becomes mu-law silence, an overlap is trimmed), so recognizer times are call times;
it turns recognizer results into live events and times them for the latency histograms. The silence
it sends for gaps is bounded by the wall-clock time the stream has lasted: a stream announcing
timestamp leaps cannot make a vendor bill (or the embedded recognizer decode) audio nobody spoke.
Reconnect, replay and de-duplication are not done here: :mod:`bridge.recognizers.resilience`.

Its collaborators are passed in (the recognizer, where events go, the metrics), so it is tested
on its own with a fake recognizer (``tests/call/test_pipeline.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from bridge import events
from bridge.audio import MULAW_SILENCE, SAMPLE_RATE
from bridge.events import Track
from bridge.metrics import Metrics, SendClock
from bridge.recognizers.base import Recognizer, RecognizerError, StreamOptions, Transcript, UtteranceEnded
from bridge.recognizers.resilience import ResilientStream, RetryPolicy

log = logging.getLogger(__name__)

#: A gap larger than this in Twilio timestamps is not filled sample by sample in one go.
_FILL_CHUNK = SAMPLE_RATE
#: Larger timestamp leaps are treated as bogus rather than filled with silence.
MAX_GAP_BYTES = 600 * SAMPLE_RATE
#: Silence sent for gaps may exceed the stream's wall-clock time by this much (network jitter).
SILENCE_SLACK_SECONDS = 5.0


class CallEvents(Protocol):
    """Where a pipeline's output goes (the call session)."""

    def emit(self, event: events.LiveEvent) -> None:
        """An ephemeral live event (partial, utterance end, status)."""

    def emit_final(self, final: events.Final) -> None:
        """A final, to be stored once and published."""

    def recognizer_state(self, status: events.RecognizerStatus) -> None:
        """A recognizer state change (the pipeline's ``stream`` has its served spans and gaps)."""


class TrackPipeline:
    """Audio of one track in, its transcript events out."""

    def __init__(
        self,
        *,
        call_sid: str,
        track: Track,
        origin: float,
        recognizer: Recognizer,
        options: StreamOptions,
        out: CallEvents,
        metrics: Metrics,
        policy: RetryPolicy | None = None,
        fallback: Recognizer | None = None,
    ) -> None:
        self.call_sid = call_sid
        self.track = track
        #: Call-clock second of this stream's first byte.
        self.origin = origin
        self.options = options
        self.out = out
        self.metrics = metrics
        self._log = {"call_sid": call_sid}
        self._reported: dict[str, float] = {}
        self._was_reconnecting = False
        self._switch_labels = (recognizer.name, fallback.name if fallback is not None else "")
        self.stream = ResilientStream(
            recognizer, options, origin=origin, on_state=self._on_state, policy=policy or RetryPolicy(),
            fallback=fallback,
        )  # fmt: skip
        self.sent = 0  # bytes of this track sent to the recognizer since the stream's start
        #: Bytes of silence sent for gaps, and leaps that were not filled (bogus or over the budget).
        self.silence_sent = 0
        self.leaps_ignored = 0
        self._created = time.monotonic()
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
        self._consumer = asyncio.create_task(self._consume(), name=f"consume-{self.call_sid}-{self.track}")

    def _fail(self, exc: BaseException) -> None:
        self.failed = True
        self.metrics.recognizer_failures.inc()
        log.error("recognizer failed for %s track: %s", self.track, exc, extra=self._log)
        if self.stream.state != "failed":  # the resilience layer already said so when it gave up
            self._on_state("failed", str(exc))

    def _on_state(self, state: events.RecognizerState, detail: str) -> None:
        stats = self.stream.stats
        if state == "connected" and self._was_reconnecting and stats.last_recovery_seconds:
            self.metrics.recovery_seconds.observe(stats.last_recovery_seconds)
        self._export_stats()
        self._was_reconnecting = state == "reconnecting"
        stream = self.stream
        self.out.recognizer_state(events.RecognizerStatus(
            call_sid=self.call_sid, track=self.track, state=state, detail=detail, recognizer=stream.recognizer.name,
            fallback=stream.on_fallback,
        ))  # fmt: skip

    async def feed(self, offset_bytes: int, payload: bytes) -> None:
        """:meth:`put`, for an asynchronous caller."""
        self.put(offset_bytes, payload)

    def put(self, offset_bytes: int, payload: bytes) -> None:
        """Send ``payload`` found at byte ``offset_bytes`` of this stream's track (a failed stream
        only counts it, so the call record's gaps reach the end of the track). Never waits: the
        resilience layer buffers, so this runs inside the media socket's read callback."""
        gap = offset_bytes - self.sent
        if gap > 0 and not self._silence_allowed(gap):
            # A leap no real stream makes (or more silence than the wall clock allows): don't synthesize it.
            if not self.leaps_ignored:
                log.warning("not filling a %.1f s timestamp leap on %s with silence", gap / SAMPLE_RATE,
                            self.track, extra=self._log)  # fmt: skip
            self.leaps_ignored += 1
            offset_bytes = self.sent
        if offset_bytes > self.sent:
            gap = offset_bytes - self.sent
            self.silence_sent += gap
            while gap > 0:  # a lost or late frame: keep the recognizer's clock on Twilio's
                n = min(gap, _FILL_CHUNK)
                self._send(bytes([MULAW_SILENCE]) * n)
                gap -= n
        elif offset_bytes < self.sent:
            payload = payload[self.sent - offset_bytes :]
        if payload:
            self._send(payload)

    def _silence_allowed(self, gap: int) -> bool:
        if gap > MAX_GAP_BYTES:
            return False
        budget = (time.monotonic() - self._created + SILENCE_SLACK_SECONDS) * SAMPLE_RATE
        return self.silence_sent + gap <= budget

    def _send(self, audio: bytes) -> None:
        self.stream.send_nowait(audio)
        self.sent += len(audio)
        self.clock.sent(self.origin + self.sent / SAMPLE_RATE)

    async def _consume(self) -> None:
        metrics = self.metrics
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
                        partial = events.Partial(
                            call_sid=self.call_sid, track=self.track, start=ev.start, end=ev.end, text=text
                        )
                        self.out.emit(partial)
                    elif text:
                        lat = self.clock.latency(ev.end)
                        if lat is not None:
                            metrics.final_lag.observe(lat)
                        self.out.emit_final(
                            events.Final(
                                call_sid=self.call_sid,
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
                    self.out.emit(events.UtteranceEnd(call_sid=self.call_sid, track=self.track, end=ev.last_word_end))
        except RecognizerError as exc:
            self._fail(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not take the call down with it
            log.exception("recognizer consumer crashed", extra=self._log)
            self._fail(exc)
        finally:
            self._export_stats()

    def _export_stats(self) -> None:
        """Move the resilience counters' growth into the Prometheus counters (on every state change)."""
        stats = self.stream.stats
        m = self.metrics
        counters = [
            ("reconnects", m.reconnects),
            ("replayed_seconds", m.replayed_seconds),
            ("dropped_seconds", m.dropped_audio_seconds),
            ("skipped_seconds", m.skipped_audio_seconds),
            ("paced_seconds", m.paced_seconds),
        ]
        if stats.switches:
            counters.append(("switches", m.recognizer_switches.labels(*self._switch_labels)))
        for name, counter in counters:
            value = float(getattr(stats, name, 0) or 0)
            delta = value - self._reported.get(name, 0.0)
            if delta > 0:
                counter.inc(delta)
                self._reported[name] = value

    async def commit(self) -> float | None:
        """A manual commit: the recognizer closes the current segment now; the call-clock second it
        closes at (``None``: this track is not being transcribed)."""
        return None if self.failed else await self.stream.commit()

    async def close(self, timeout: float) -> None:
        """Finalize and wait (bounded) for the last finals, so a call's last words are kept."""
        if not self.failed:
            try:
                await self.stream.close(timeout=timeout)
            except RecognizerError as exc:
                log.warning("closing recognizer stream: %s", exc, extra=self._log)
            except Exception:
                log.exception("closing recognizer stream failed", extra=self._log)
        if self._consumer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._consumer), timeout=timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._consumer
        self._export_stats()


__all__ = ["MAX_GAP_BYTES", "CallEvents", "TrackPipeline"]
