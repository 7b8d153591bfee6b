"""Admission control: an overloaded or draining instance refuses new calls, never frames of calls it has.

Once the event loop cannot keep up, every call on the instance suffers: frames wait, partials lag,
buffers grow. So the instance refuses *new* work first, where refusing is cheap and clear:

- the voice webhook (a new call) answers with TwiML that carries the call on without a stream
  (``BRIDGE_OVERLOAD_ACTION=untranscribed``, the default: the caller still reaches the agent, the
  call is logged and counted as not transcribed) or with HTTP 503 (``503``: Twilio then tries the
  number's Fallback URL, https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides);
- the media WebSocket is refused *before* the upgrade with HTTP 503 when the instance is draining,
  carries ``BRIDGE_MAX_CALLS`` calls, or its loop lag is past twice the limit (a proxy in front then
  tries another instance: ``proxy_next_upstream http_503``). A stream cannot be told apart from a
  reconnecting stream of a call already here until its ``start`` message, so the stream gate is the
  stricter one, and the voice webhook refuses first.

Load is the event loop's lag: how late a 50 ms timer fires, smoothed over about a second. It rises
only once the loop is saturated, whatever costs the CPU (frames, fan-out, a noisy neighbour), which is
what delays frames. ``bridge_admission_refused_total{where,reason}`` counts every refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Literal

from bridge.metrics import Metrics
from bridge.settings import Settings

log = logging.getLogger(__name__)

Where = Literal["voice", "media"]
Reason = Literal["draining", "capacity", "overloaded"]

#: Seconds between two lag probes.
PROBE_SECONDS = 0.05
#: Time constant of the smoothed lag (seconds): a busy second moves it most of the way.
SMOOTHING_SECONDS = 1.0


class Refusal:
    """Why the instance takes no new call now (a label for the metric and a message for the log)."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason: Reason = reason
        self.detail = detail

    def __repr__(self) -> str:
        return f"Refusal({self.reason!r}, {self.detail!r})"


class Admission:
    """Watches the event loop and answers :meth:`refuse` for the voice webhook and the media socket."""

    def __init__(
        self, settings: Settings, *, calls: Callable[[], int], draining: Callable[[], bool],
        metrics: Metrics | None = None,
    ) -> None:  # fmt: skip
        self.max_calls = settings.max_calls
        self.lag_limit = settings.admission_lag_ms / 1000
        self._calls = calls
        self._draining = draining
        self.metrics = metrics
        #: Smoothed event-loop lag in seconds.
        self.lag = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.lag_limit > 0:
            self._task = asyncio.create_task(self._watch(), name="admission-lag")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + PROBE_SECONDS
            await asyncio.sleep(PROBE_SECONDS)
            late = max(0.0, loop.time() - due)
            self.observe(late, PROBE_SECONDS + late)

    def observe(self, lag: float, interval: float = PROBE_SECONDS) -> None:
        """Fold one probe (``lag`` seconds late, ``interval`` after the previous) into the smoothed lag:
        weighted by time, so a loop too busy to probe often still moves it within a second."""
        self.lag += (1.0 - math.exp(-interval / SMOOTHING_SECONDS)) * (lag - self.lag)
        if self.metrics is not None:
            self.metrics.loop_lag.set(self.lag)

    def refuse(self, where: Where) -> Refusal | None:
        """The reason to refuse a new call arriving at ``where``, or ``None`` to take it (counted)."""
        refusal = self._check(where)
        if refusal is not None and self.metrics is not None:
            self.metrics.admission_refused.labels(where, refusal.reason).inc()
        return refusal

    def _check(self, where: Where) -> Refusal | None:
        if self._draining():
            return Refusal("draining", "this instance is draining")
        calls = self._calls()
        if self.max_calls and calls >= self.max_calls:
            return Refusal("capacity", f"{calls} calls in progress (BRIDGE_MAX_CALLS={self.max_calls})")
        limit = self.lag_limit * (2 if where == "media" else 1)
        if limit > 0 and self.lag > limit:
            return Refusal("overloaded", f"event loop {self.lag * 1000:.0f} ms late (limit {limit * 1000:.0f} ms)")
        return None


__all__ = ["PROBE_SECONDS", "SMOOTHING_SECONDS", "Admission", "Reason", "Refusal", "Where"]
