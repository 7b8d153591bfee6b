"""Telephony audio helpers: mu-law/PCM decoding, 8->16 kHz resampling and a tiny RIFF reader.

The fixtures are WAVE_FORMAT_MULAW files, which the stdlib ``wave`` module refuses, so the RIFF
chunks are walked by hand here.
"""

from __future__ import annotations

import audioop  # audioop-lts provides it on Python >= 3.13
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_MULAW = 7


@dataclass(frozen=True)
class WavData:
    """Raw sample bytes of a WAV file plus the format fields we care about."""

    format_tag: int
    channels: int
    sample_rate: int
    bits_per_sample: int
    data: bytes

    @property
    def duration(self) -> float:
        frame = self.channels * self.bits_per_sample // 8
        return len(self.data) / frame / self.sample_rate

    def channel(self, index: int) -> bytes:
        """The bytes of one channel (de-interleaved)."""
        width = self.bits_per_sample // 8
        if self.channels == 1:
            return self.data
        arr = np.frombuffer(self.data, dtype=np.uint8).reshape(-1, self.channels, width)
        return arr[:, index, :].tobytes()


def read_wav(path: str | Path) -> WavData:
    """Parse a RIFF/WAVE file of PCM or mu-law samples."""
    raw = Path(path).read_bytes()
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    data: bytes | None = None
    while pos + 8 <= len(raw):
        cid, size = raw[pos : pos + 4], struct.unpack("<I", raw[pos + 4 : pos + 8])[0]
        body = raw[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            tag, ch, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
            fmt = (tag, ch, rate, bits)
        elif cid == b"data":
            data = body
        pos += 8 + size + (size & 1)
    if fmt is None or data is None:
        raise ValueError(f"{path}: missing fmt or data chunk")
    return WavData(fmt[0], fmt[1], fmt[2], fmt[3], data)


def mulaw_to_pcm16(data: bytes) -> bytes:
    """G.711 mu-law bytes to signed 16-bit little-endian PCM."""
    return audioop.ulaw2lin(data, 2)


def pcm16_to_mulaw(data: bytes) -> bytes:
    return audioop.lin2ulaw(data, 2)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Signed 16-bit PCM to float32 in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


class Upsampler:
    """Streaming 8 kHz -> 16 kHz linear interpolation that keeps one sample of state between chunks.

    Whisper only needs the telephone band (< 4 kHz), so interpolation is enough; the state keeps the
    seams between 20 ms chunks continuous.
    """

    def __init__(self) -> None:
        self._last: float | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.size == 0:
            return x
        prev = x[0] if self._last is None else self._last
        shifted = np.concatenate(([prev], x[:-1])).astype(np.float32)
        out = np.empty(x.size * 2, dtype=np.float32)
        out[0::2] = (shifted + x) * 0.5
        out[1::2] = x
        self._last = float(x[-1])
        return out
