"""Where a stream that takes a call over from another instance puts its audio (see :mod:`bridge.call.handoff`).

A replacement stream's ``media`` timestamps restart at 0, and Twilio says nothing of where that is in
the call; the call's start time (in Redis) and this instance's clock say it, to a few milliseconds on
hosts kept in time by NTP. Twilio sends 20 ms frames, so the new stream's first frame is put on the
call's 20 ms grid: a placement error under 10 ms vanishes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

#: The ``<Parameter>`` that marks a stream the bridge started itself, and why.
HANDOFF_PARAMETER = "handoff"
#: The cut is at least this long after the replacement's start: time for the draining instance to learn it.
CUT_LEAD_SECONDS = 1.0
#: Twilio's frame: every stream's audio is placed on this grid of the call clock.
FRAME_SECONDS = 0.02


@dataclasses.dataclass(frozen=True)
class Takeover:
    """This stream continues a call another instance carried live."""

    mode: Literal["drain", "recover"]
    #: ``recover``: the call-clock second the lost stream's instance last reported (the gap starts there).
    lost_at: float | None = None


def takeover_mode(parameters: dict[str, str]) -> Literal["drain", "recover"] | None:
    """The ``handoff`` parameter of a stream's ``start``; anything else is an ordinary stream."""
    value = parameters.get(HANDOFF_PARAMETER, "")
    return value if value in ("drain", "recover") else None  # type: ignore[return-value]


def placement(origin: float, takeover: Takeover) -> tuple[float, float]:
    """(origin, begin) of a takeover stream: its first frame on the call's 20 ms grid, and where its
    audio starts to count (the cut, a whole second, for a drain; at once for a recovery)."""
    origin = round(round(origin / FRAME_SECONDS) * FRAME_SECONDS, 3)
    if takeover.mode == "drain":
        return origin, float(math.ceil(origin + CUT_LEAD_SECONDS))
    return origin, origin


__all__ = ["CUT_LEAD_SECONDS", "FRAME_SECONDS", "HANDOFF_PARAMETER", "Takeover", "placement", "takeover_mode"]
