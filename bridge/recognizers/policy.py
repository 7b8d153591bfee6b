"""The knobs of :mod:`bridge.recognizers.resilience` and the counters it keeps (exported as metrics).

Apart from the mechanism so the one place that tunes keepalive, reconnect, replay, fallback and send
coalescing reads as a table: production keeps the defaults except what ``bridge.settings`` maps
from the environment; tests shrink the timings.
"""

from __future__ import annotations

import dataclasses
import math

from bridge.events import GapReason, LiveGap
from bridge.retry import Backoff


@dataclasses.dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Timings of keepalive, reconnect, replay and fallback. Tests shrink them; production keeps the
    defaults (``BRIDGE_CATCHUP_SECONDS`` and ``BRIDGE_FALLBACK_AFTER_SECONDS`` set two of them)."""

    keepalive_interval: float = 4.0
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    #: This many failures within ``failure_window`` seconds end the stream as ``failed``.
    max_failures: int = 10
    failure_window: float = 120.0
    #: A connection that lived this long resets the backoff to ``backoff_base``.
    stable_after: float = 10.0
    #: Seconds of audio not yet covered by a final that are kept for replay (a memory bound).
    buffer_seconds: float = 60.0
    #: After a reconnect the live transcript is current again within this many seconds: replay at
    #: ingest rate ``r`` gains ``r - 1`` s on live audio per second, so at most
    #: ``catchup_seconds * (r - 1)`` s are replayed (5 s at Deepgram's 1.25x); older uncovered audio
    #: goes to the batch pass only. Recognizers without a known limit get the whole buffer.
    catchup_seconds: float = 20.0
    #: Overrides every recognizer's ``max_ingest_rate`` (``math.inf``: unpaced and uncapped; for
    #: tests that feed audio faster than real time and do not test pacing).
    max_ingest_rate: float | None = None
    #: Audio a paced connection may send at once beyond its rate.
    pace_burst_seconds: float = 1.0
    #: Largest single send when replaying (seconds of audio).
    replay_chunk_seconds: float = 0.5
    #: Bound on opening one connection.
    connect_timeout: float = 10.0
    #: With a fallback recognizer: switch when the primary is not back within this many seconds.
    fallback_after: float = 5.0
    #: Live audio is sent in messages of about this many seconds (Twilio's 20 ms frames coalesced):
    #: each WebSocket message costs the bridge and the recognizer the same CPU whatever its size, and
    #: the wait adds at most this much to a word's latency (``BRIDGE_SEND_CHUNK_MS``; 0: every frame).
    send_chunk_seconds: float = 0.1

    def backoff(self, attempt: int) -> float:
        """Seconds before reconnect attempt ``attempt`` (the bridge's one rule, :mod:`bridge.retry`)."""
        return Backoff(self.backoff_base, self.backoff_cap).delay(attempt)

    def ingest_rate(self, recognizer_rate: float | None) -> float | None:
        """Audio-seconds per second a recognizer with ``recognizer_rate`` is sent at most when behind
        (``None``: no known limit)."""
        rate = recognizer_rate if self.max_ingest_rate is None else self.max_ingest_rate
        return None if rate is None or math.isinf(rate) else rate


@dataclasses.dataclass
class ResilienceStats:
    """Counters exported as metrics."""

    reconnects: int = 0
    replayed_seconds: float = 0.0
    dropped_seconds: float = 0.0  # not kept: buffer overflow, failure, close while disconnected
    skipped_seconds: float = 0.0  # left to the batch pass by the catch-up budget
    paced_seconds: float = 0.0  # waited to stay under the recognizer's ingest rate
    last_recovery_seconds: float = 0.0
    duplicate_finals: int = 0
    switches: int = 0  # from the primary recognizer to the fallback

    def add_gap(self, gaps: list[LiveGap], start: float, end: float, reason: GapReason) -> None:
        """Count ``[start, end)`` call-clock seconds not transcribed live, and record them in ``gaps``
        (extending the last gap when it has the same reason and ends where this one starts)."""
        if reason == "catchup":
            self.skipped_seconds += end - start
        else:
            self.dropped_seconds += end - start
        t0, t1 = round(start, 3), round(end, 3)
        last = gaps[-1] if gaps else None
        if last is not None and last.reason == reason and abs(last.end - t0) < 1e-3:
            last.end = t1
        else:
            gaps.append(LiveGap(start=t0, end=t1, reason=reason))


__all__ = ["ResilienceStats", "RetryPolicy"]
