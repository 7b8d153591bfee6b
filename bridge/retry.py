"""The one backoff rule: exponential, capped, with "equal jitter".

Every retry loop of the bridge uses it: recognizer reconnects (:mod:`bridge.recognizers.resilience`),
the Redis write-behind (:mod:`bridge.store.writeback`), the fan-out hub's pub/sub reconnect
(:mod:`bridge.live.hub`) and the batch worker's job retries (:mod:`bridge.batch.worker`).

Attempt ``n`` (from 0) waits a uniform time in ``[c/2, c]`` with ``c = min(cap, base * 2**n)``:
the delays follow 1, 2, 4, 8 … like plain exponential backoff (never a burst of immediate
retries, as full jitter allows), and the random half spreads many clients that failed together
(the "equal jitter" of https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
"""

from __future__ import annotations

import dataclasses
import random


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays of a retry loop: ``delay(0)``, ``delay(1)`` … in seconds."""

    base: float = 1.0
    cap: float = 30.0

    def ceiling(self, attempt: int) -> float:
        """The longest delay of attempt ``attempt`` (no jitter)."""
        return float(min(self.cap, self.base * 2.0 ** max(0, min(attempt, 62))))

    def delay(self, attempt: int) -> float:
        c = self.ceiling(attempt)
        return random.uniform(c / 2, c)


__all__ = ["Backoff"]
