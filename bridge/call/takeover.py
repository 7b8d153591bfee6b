"""Where a stream that takes a call over from another instance puts its audio (see :mod:`bridge.call.handoff`).

A replacement stream's ``media`` timestamps restart at 0, and Twilio says nothing of where that is in
the call. First estimate: the call's start time (in Redis) and this instance's clock, put on the
call's 20 ms frame grid; it can be a frame off (the two streams' first frames and the two instances'
receive delays differ by up to a frame). A drain then makes it exact, because the old and the new
stream hear the same audio for a while: the new stream's first :data:`PROBE_BYTES` of inbound audio
(a :class:`Probe`) are looked up in the old stream's recent audio (:class:`Recent`), and where they
match is where the new stream starts. A recovery has no overlap and keeps the estimate.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Literal

import msgspec

from bridge.events import LiveGap, ServedSpan

#: The ``<Parameter>`` that marks a stream the bridge started itself, and why.
HANDOFF_PARAMETER = "handoff"
#: The cut is at least this long after the replacement's start: time for the draining instance to learn it.
CUT_LEAD_SECONDS = 1.0
#: Twilio's frame: every stream's audio is placed on this grid of the call clock.
FRAME_SECONDS = 0.02
#: Inbound audio of the new stream matched against the old one's (mu-law bytes, 8 per ms).
PROBE_BYTES = 1600
#: How much recent inbound audio the old stream keeps while it hands off.
RECENT_BYTES = 30 * 8000


@dataclasses.dataclass(frozen=True)
class Takeover:
    """This stream continues a call another instance carried live."""

    mode: Literal["drain", "recover"]
    #: ``recover``: the call-clock second the lost stream's instance last reported (the gap starts there).
    lost_at: float | None = None
    #: Per track, which recognizer served which span and what was not transcribed live, as the call's
    #: record said when this stream started (the other instance's part of the call).
    served: dict[str, list[ServedSpan]] = dataclasses.field(default_factory=dict)
    gaps: dict[str, list[LiveGap]] = dataclasses.field(default_factory=dict)

    def coverage_before(self, track: str, begin: float) -> tuple[list[ServedSpan], list[LiveGap]]:
        """The other instance's spans of ``track``, ended where its audio stopped counting."""
        until = self.lost_at if self.mode == "recover" and self.lost_at is not None else begin
        replace = msgspec.structs.replace
        served = [replace(s, end=min(until, until if s.end is None else s.end))
                  for s in self.served.get(track, []) if s.start < until]  # fmt: skip
        gaps = [replace(g, end=min(until, g.end)) for g in self.gaps.get(track, []) if g.start < until]
        return served, gaps


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


class AudioWatch:
    """Sees every frame of one stream before it is trimmed (a stream handle calls :meth:`feed`)."""

    def __init__(self, track: str) -> None:
        self.track = track
        self.data = bytearray()

    def feed(self, track: str, timestamp_ms: int, pos: int, payload: bytes) -> None:
        raise NotImplementedError


class Probe(AudioWatch):
    """The new stream's first inbound audio, from its timestamp 0; ``on_full`` gets it once."""

    def __init__(self, track: str, on_full: Callable[[bytes], None]) -> None:
        super().__init__(track)
        self.on_full: Callable[[bytes], None] | None = on_full

    def feed(self, track: str, timestamp_ms: int, pos: int, payload: bytes) -> None:
        if track != self.track or self.on_full is None:
            return
        if timestamp_ms * 8 != len(self.data):  # a frame missing: no contiguous probe
            self.on_full = None
            return
        self.data += payload
        if len(self.data) >= PROBE_BYTES:
            callback, self.on_full = self.on_full, None
            callback(bytes(self.data[:PROBE_BYTES]))


class Recent(AudioWatch):
    """The old stream's recent inbound audio, by call-clock byte (``at``: the first one kept)."""

    def __init__(self, track: str) -> None:
        super().__init__(track)
        self.at = 0

    def feed(self, track: str, timestamp_ms: int, pos: int, payload: bytes) -> None:
        if track != self.track:
            return
        if pos != self.at + len(self.data):
            self.data.clear()
            self.at = pos
        self.data += payload
        excess = len(self.data) - RECENT_BYTES
        if excess > 0:
            del self.data[:excess]
            self.at += excess

    def find(self, probe: bytes) -> float | None:
        """The call-clock second where ``probe`` was heard, if only once and not a constant (silence)."""
        if len(set(probe)) < 8:
            return None
        i = self.data.find(probe)
        if i < 0 or self.data.rfind(probe) != i:
            return None
        return (self.at + i) / 8000


__all__ = [
    "CUT_LEAD_SECONDS",
    "FRAME_SECONDS",
    "HANDOFF_PARAMETER",
    "PROBE_BYTES",
    "AudioWatch",
    "Probe",
    "Recent",
    "Takeover",
    "placement",
    "takeover_mode",
]
