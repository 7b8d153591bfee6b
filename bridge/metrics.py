"""Prometheus metrics of the bridge, and the latency bookkeeping behind its histograms.

Each app owns a :class:`Metrics` with its own registry (so several apps can live in one process, as
in tests). Under ``bridge serve --workers N`` the processes share one port, so a scrape reaches any
of them: prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor)
makes every scrape answer for all of them, counters summed and gauges summed over live processes.

Latency is measured inside the bridge the way the benchmark harness measures it: every
20 ms frame's send time is remembered per track, and a result covering audio up to ``end`` is
matched to the send time of the frame that contains ``end``.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
_FAST_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.active_calls = Gauge("bridge_active_calls", "Calls being carried by this instance", registry=r,
                                  multiprocess_mode="livesum")  # fmt: skip
        self.calls_total = Counter("bridge_calls_total", "Calls started", registry=r)
        self.frames = Counter("bridge_frames_total", "Twilio media frames received", ["track"], registry=r)
        self.frames_rejected = Counter(
            "bridge_streams_rejected_total", "Media streams closed for bad input", ["reason"], registry=r
        )
        self.finals = Counter("bridge_finals_total", "Finals stored", registry=r)
        self.captures_refused = Counter(
            "bridge_captures_refused_total", "Browser captures refused or closed for bad input, by close code",
            ["code"], registry=r,
        )  # fmt: skip
        self.commits = Counter("bridge_commits_total", "Manual commits, by HTTP status", ["status"], registry=r)
        self.admission_refused = Counter(
            "bridge_admission_refused_total", "New calls refused by admission control", ["where", "reason"],
            registry=r,
        )  # fmt: skip
        self.loop_lag = Gauge(
            "bridge_event_loop_lag_seconds", "How late the event loop runs timers (smoothed over ~1 s)", registry=r,
            multiprocess_mode="livemax",
        )
        self.finals_duplicate = Counter(
            "bridge_finals_duplicate_total", "Finals already stored (idempotent re-write)", registry=r
        )
        self.alerts = Counter(
            "bridge_compliance_alerts_total", "Live alert rule matches on finals, by rule", ["rule"], registry=r
        )
        self.partials = Counter("bridge_partials_total", "Partials published", registry=r)
        self.reconnects = Counter("bridge_recognizer_reconnects_total", "Recognizer reconnects", registry=r)
        self.replayed_seconds = Counter(
            "bridge_recognizer_replayed_seconds_total", "Audio replayed after reconnects", registry=r
        )
        self.dropped_audio_seconds = Counter(
            "bridge_recognizer_dropped_audio_seconds_total", "Audio that could not be kept", registry=r
        )
        self.skipped_audio_seconds = Counter(
            "bridge_recognizer_skipped_audio_seconds_total",
            "Audio left to the batch pass so the live transcript catches up within BRIDGE_CATCHUP_SECONDS",
            registry=r,
        )
        self.paced_seconds = Counter(
            "bridge_recognizer_paced_seconds_total",
            "Time replay waited to stay under the recognizer's ingest rate",
            registry=r,
        )
        self.recognizer_switches = Counter(
            "bridge_recognizer_fallback_switches_total",
            "Tracks switched from their recognizer to the fallback",
            ["from_recognizer", "to_recognizer"],
            registry=r,
        )
        self.recovery_seconds = Histogram(
            "bridge_recognizer_recovery_seconds", "Outage to reconnected", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.recognizer_failures = Counter(
            "bridge_recognizer_failures_total", "Recognizer streams that failed for good", registry=r
        )
        self.subscribers_dropped = Counter(
            "bridge_subscribers_dropped_total", "Live subscribers dropped for being slow", registry=r
        )
        self.recordings = Counter("bridge_recordings_enqueued_total", "Recording jobs enqueued", registry=r)
        self.recording_failures = Counter(
            "bridge_recording_failures_total", "Call recordings stopped by a write error (the calls went on)",
            registry=r,
        )
        self.handoffs = Counter(
            "bridge_stream_handoffs_total", "Calls this instance had to give up on drain, by outcome "
            "(handed_off, no_replacement, failed, limit, connect_mode)", ["result"], registry=r,
        )  # fmt: skip
        self.recoveries = Counter(
            "bridge_stream_recoveries_total", "Replacement streams started for calls that lost theirs (started, "
            "failed)", ["result"], registry=r,
        )  # fmt: skip
        self.stream_gaps = Counter("bridge_stream_gaps_total", "Call time spans no stream carried (an instance "
                                   "died mid-call)", registry=r)  # fmt: skip
        self.stream_gap_seconds = Counter("bridge_stream_gap_seconds_total", "Call time no stream carried",
                                          registry=r)  # fmt: skip
        self.media_streams = Gauge("bridge_media_streams", "Twilio media sockets open", registry=r,
                                   multiprocess_mode="livesum")  # fmt: skip
        self.store_outages = Counter(
            "bridge_store_outages_total", "Times Redis became unreachable for the write-behind (writes buffered)",
            registry=r,
        )
        self.first_partial = Histogram(
            "bridge_time_to_first_partial_seconds",
            "From the first frame of a track to its first partial",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.partial_latency = Histogram(
            "bridge_partial_latency_seconds",
            "From sending the frame holding a partial's last audio to receiving the partial",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.final_lag = Histogram(
            "bridge_final_lag_seconds",
            "From sending the frame holding a final's last audio to receiving the final",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_handling = Histogram(
            "bridge_frame_handling_seconds",
            "Bridge-added time per Twilio frame (record, forward), one frame in 8 timed",
            buckets=_FAST_BUCKETS,
            registry=r,
        )

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # bridge serve --workers N: every worker's samples
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class SendClock:
    """Remembers when each 20 ms frame of one track was sent, to time the results that cover it."""

    FRAME = 0.02

    def __init__(self, horizon_seconds: float = 120.0) -> None:
        self._maxlen = int(horizon_seconds / self.FRAME)
        self._times: deque[float] = deque(maxlen=self._maxlen)
        self._first_index = 0  # frame index of _times[0]
        self.first_sent: float | None = None

    def sent(self, audio_end: float, now: float | None = None) -> None:
        """Record that audio up to ``audio_end`` seconds (connection-independent clock) was sent."""
        times = self._times
        missing = int(audio_end / self.FRAME + 1e-6) + 1 - self._first_index - len(times)
        if missing <= 0:  # called every frame: the common case is one new frame, or none
            return
        t = time.monotonic() if now is None else now
        if self.first_sent is None:
            self.first_sent = t
        if missing == 1 and len(times) < self._maxlen:
            times.append(t)
            return
        room = self._maxlen - len(times)
        if missing > room:
            self._first_index += missing - room
        times.extend(itertools.repeat(t, missing))

    def latency(self, audio_end: float, now: float | None = None) -> float | None:
        """Seconds since the frame holding ``audio_end`` was sent, or None when it is unknown."""
        t = time.monotonic() if now is None else now
        index = int(max(audio_end - 1e-6, 0.0) / self.FRAME) - self._first_index
        if index < 0 or index >= len(self._times):
            return None
        return max(0.0, t - self._times[index])


__all__ = ["Metrics", "SendClock"]
