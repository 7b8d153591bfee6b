"""Per-call recording: the mu-law audio Twilio sent, written as a WAV file for the batch pass.

Twilio's frames are placed by their ``media.timestamp`` (not by arrival), so a dropped or late frame
leaves mu-law silence where it belongs and the two legs stay aligned sample for sample. With both
tracks the file is stereo: channel 0 = inbound (caller), channel 1 = outbound (agent).
The header is the standard WAVE_FORMAT_MULAW (tag 7) one that sox, ffmpeg and browsers read.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from bridge.audio import SAMPLE_RATE, mulaw_header
from bridge.events import Track

log = logging.getLogger(__name__)

#: Write once this much audio (per channel) is ready; keeps writes large and rare.
_FLUSH_BYTES = SAMPLE_RATE
#: A leg that stops sending is padded with silence once the other is this far ahead.
_MAX_SKEW_BYTES = 2 * SAMPLE_RATE
#: A single timestamp jump larger than this is treated as bogus, not as a gap to fill.
_MAX_GAP_BYTES = 600 * SAMPLE_RATE


class CallRecording:
    """Writes one call's audio to ``path`` as it arrives; :meth:`close` finalises the header."""

    def __init__(self, path: Path, tracks: Sequence[Track]) -> None:
        self.path = path
        self.tracks: tuple[Track, ...] = tuple(tracks)
        self.channels = len(self.tracks)
        if self.channels not in (1, 2):
            raise ValueError("a recording has one or two tracks")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: BinaryIO | None = open(path, "wb")
        self._fh.write(mulaw_header(self.channels, 0))
        self._pending: dict[Track, bytearray] = {t: bytearray() for t in self.tracks}
        self._written = 0  # frames (samples per channel) already on disk
        self.gaps_filled = 0  # bytes of silence inserted for missing frames

    @property
    def duration(self) -> float:
        return self.frames / SAMPLE_RATE

    @property
    def frames(self) -> int:
        return self._written + max(len(b) for b in self._pending.values())

    def write(self, track: Track, offset_bytes: int, payload: bytes) -> None:
        """Place ``payload`` at byte ``offset_bytes`` of ``track`` (its Twilio timestamp times 8)."""
        buf = self._pending.get(track)
        if buf is None or self._fh is None:
            return
        pos = offset_bytes - self._written
        end = len(buf)
        if pos > end:
            gap = pos - end
            if gap > _MAX_GAP_BYTES:
                log.warning("recording %s: ignoring a %d s timestamp jump", self.path.name, gap // SAMPLE_RATE)
                pos = end
            else:
                buf.extend(b"\xff" * gap)
                self.gaps_filled += gap
        if pos < 0:  # a frame for audio already written: keep what is on disk
            payload = payload[-pos:]
            pos = 0
        if pos < len(buf):  # overlap (duplicate or re-sent frame): overwrite in place
            overlap = min(len(buf) - pos, len(payload))
            buf[pos : pos + overlap] = payload[:overlap]
            buf.extend(payload[overlap:])
        else:
            buf.extend(payload)
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        lengths = [len(b) for b in self._pending.values()]
        ready = min(lengths)
        if max(lengths) - ready > _MAX_SKEW_BYTES:
            # One leg went quiet (no frames at all): pad it so memory stays bounded.
            ready = max(lengths) - _MAX_SKEW_BYTES
            for b in self._pending.values():
                if len(b) < ready:
                    self.gaps_filled += ready - len(b)
                    b.extend(b"\xff" * (ready - len(b)))
        if ready >= _FLUSH_BYTES:
            self._flush(ready)

    def _flush(self, n: int) -> None:
        assert self._fh is not None
        if n <= 0:
            return
        if self.channels == 1:
            (buf,) = self._pending.values()
            self._fh.write(bytes(buf[:n]))
            del buf[:n]
        else:
            a, b = (self._pending[t] for t in self.tracks)
            out = bytearray(2 * n)
            out[0::2] = a[:n]
            out[1::2] = b[:n]
            self._fh.write(out)
            del a[:n]
            del b[:n]
        self._written += n

    def close(self) -> float:
        """Pad the legs to the same length, write everything and the final header; returns seconds."""
        if self._fh is None:
            return self.duration
        longest = max(len(b) for b in self._pending.values())
        for b in self._pending.values():
            b.extend(b"\xff" * (longest - len(b)))
        self._flush(longest)
        self._fh.seek(0)
        self._fh.write(mulaw_header(self.channels, self._written))
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        return self.duration


__all__ = ["CallRecording"]
