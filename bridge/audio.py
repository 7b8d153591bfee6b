"""Telephony audio, in one place: G.711 mu-law, WAV files, and the 8 -> 16 kHz step Whisper needs.

Twilio's audio is 8 kHz mu-law and the bridge passes it on byte for byte, so the G.711 WAV files it
writes and reads are handled here with a small RIFF walker: a decoding library (soundfile) would
hand back PCM and make the bridge re-encode what it was meant to keep untouched. Other encodings
(PCM of any width, float, A-law, any rate), which only ``bridge replay`` accepts, are decoded by
soundfile (libsndfile) and transcoded once to what Twilio would send.

WAVE_FORMAT_MULAW (tag 7) is not readable by the stdlib ``wave`` module; the header written here is
the standard one that sox, ffmpeg and browsers read (https://www.mmsp.ece.mcgill.ca/Documents/
AudioFormats/WAVE/WAVE.html).
"""

from __future__ import annotations

import audioop  # audioop-lts provides it on Python >= 3.13
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE = 8000
WHISPER_RATE = 16000
#: mu-law zero: what Twilio sends for silence and what fills gaps.
MULAW_SILENCE = 0xFF
#: One Twilio media frame: 20 ms of 8 kHz mu-law.
FRAME_BYTES = 160
FRAME_SECONDS = 0.02

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_FLOAT = 3
WAVE_FORMAT_ALAW = 6
WAVE_FORMAT_MULAW = 7
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
#: Size of the header :func:`mulaw_header` writes: RIFF(12) + fmt(8+18) + fact(8+4) + data(8).
MULAW_HEADER_BYTES = 58
#: Longest recording accepted (a bogus header must not make us allocate gigabytes).
MAX_SECONDS = 6 * 3600


class WavError(ValueError):
    """The bytes are not a WAV file we can read; ``str(exc)`` says why."""


# -- G.711 mu-law ------------------------------------------------------------------------------


def _mulaw_table() -> np.ndarray:
    """mu-law byte -> float in [-1, 1): the standard G.711 expansion (14-bit magnitude)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return (np.where(sign != 0, -magnitude, magnitude) / 32768.0).astype(np.float32)


_MULAW = _mulaw_table()


def mulaw_to_float(data: bytes | np.ndarray) -> np.ndarray:
    """mu-law bytes (or uint8 codes) to float32 samples in [-1, 1)."""
    codes = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    out: np.ndarray = _MULAW[codes]
    return out


def mulaw_to_pcm16(data: bytes) -> bytes:
    """G.711 mu-law bytes to signed 16-bit little-endian PCM."""
    return audioop.ulaw2lin(data, 2)


def pcm16_to_mulaw(data: bytes) -> bytes:
    return audioop.lin2ulaw(data, 2)


def pcm16_to_float(data: bytes) -> np.ndarray:
    """Signed 16-bit PCM to float32 in [-1, 1)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def silence(seconds: float) -> bytes:
    return bytes([MULAW_SILENCE]) * round(seconds * SAMPLE_RATE)


# -- resampling --------------------------------------------------------------------------------


def to_16k(x: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """A whole float signal at ``rate`` resampled to 16 kHz by linear interpolation.

    Telephone audio has nothing above 4 kHz for a better filter to keep.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if rate == WHISPER_RATE or x.size == 0:
        return x
    n_out = round(x.size * WHISPER_RATE / rate)
    t = np.arange(n_out, dtype=np.float64) * (rate / WHISPER_RATE)
    out: np.ndarray = np.interp(t, np.arange(x.size), x).astype(np.float32)
    return out


class Upsampler:
    """Streaming 8 kHz -> 16 kHz linear interpolation that keeps one sample of state between chunks,
    so the seams between 20 ms chunks stay continuous."""

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


# -- WAV files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Wav:
    """A parsed WAV file: the format fields we use, its sample bytes, and the file itself."""

    format_tag: int
    channels: int
    sample_rate: int
    bits_per_sample: int
    data: bytes
    #: The whole file as read (HTTP batch engines upload it as is).
    raw: bytes = b""

    @property
    def frame_bytes(self) -> int:
        return self.channels * max(1, self.bits_per_sample // 8)

    @property
    def frames(self) -> int:
        return len(self.data) // self.frame_bytes

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate

    @property
    def is_mulaw_8k(self) -> bool:
        return self.format_tag == WAVE_FORMAT_MULAW and self.sample_rate == SAMPLE_RATE and self.bits_per_sample == 8

    def channel_bytes(self, index: int) -> bytes:
        """The sample bytes of one channel, de-interleaved."""
        width = max(1, self.bits_per_sample // 8)
        data = self.data[: self.frames * self.frame_bytes]
        if self.channels == 1:
            return data
        arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, self.channels, width)
        return arr[:, index, :].tobytes()

    def samples(self) -> np.ndarray:
        """float32 samples in [-1, 1), shape (frames, channels); mu-law or 16-bit PCM only."""
        n = self.frames * self.channels
        if self.format_tag == WAVE_FORMAT_MULAW and self.bits_per_sample == 8:
            flat = mulaw_to_float(np.frombuffer(self.data, dtype=np.uint8, count=n))
        elif self.format_tag == WAVE_FORMAT_PCM and self.bits_per_sample == 16:
            flat = np.frombuffer(self.data, dtype="<i2", count=n).astype(np.float32) / 32768.0
        else:
            raise WavError(f"unsupported encoding (format tag {self.format_tag}, {self.bits_per_sample} bits)")
        return flat.reshape(self.frames, self.channels)

    def channel_16k(self, index: int) -> np.ndarray:
        """One channel as float32 at 16 kHz (what Whisper takes)."""
        return to_16k(self.samples()[:, index], self.sample_rate)


def parse_wav(raw: bytes, name: str = "recording") -> Wav:
    """Walk the RIFF chunks of a WAV file; raises :class:`WavError` on anything that is not one.

    A streaming writer that was killed may leave the data size short or long: what is there is taken.
    """
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise WavError(f"{name}: not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    data: bytes | None = None
    while pos + 8 <= len(raw):
        cid = raw[pos : pos + 4]
        (size,) = struct.unpack_from("<I", raw, pos + 4)
        body = raw[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise WavError(f"{name}: fmt chunk too short")
            tag, ch, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
            if tag == WAVE_FORMAT_EXTENSIBLE:
                if len(body) < 26:
                    raise WavError(f"{name}: WAVE_FORMAT_EXTENSIBLE without a sub-format")
                (tag,) = struct.unpack_from("<H", body, 24)
            fmt = (tag, ch, rate, bits)
        elif cid == b"data":
            data = body
            break
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or data is None:
        raise WavError(f"{name}: missing fmt or data chunk")
    tag, channels, rate, bits = fmt
    if not 1 <= channels <= 8 or not 4000 <= rate <= 192000 or bits not in (8, 16, 24, 32, 64):
        raise WavError(f"{name}: implausible header ({channels} channels, {rate} Hz, {bits} bits)")
    wav = Wav(tag, channels, rate, bits, data, raw)
    if wav.duration > MAX_SECONDS:
        raise WavError(f"{name}: longer than {MAX_SECONDS} s")
    return wav


def read_wav(path: str | os.PathLike[str]) -> Wav:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise WavError(f"{path}: {exc.strerror or exc}") from None
    return parse_wav(raw, str(path))


def mulaw_header(channels: int, frames: int) -> bytes:
    """The 58-byte header of an 8 kHz G.711 mu-law WAV holding ``frames`` samples per channel."""
    data_bytes = frames * channels
    fmt = struct.pack("<HHIIHHH", WAVE_FORMAT_MULAW, channels, SAMPLE_RATE, SAMPLE_RATE * channels, channels, 8, 0)
    return (
        b"RIFF"
        + struct.pack("<I", MULAW_HEADER_BYTES - 8 + data_bytes)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<II", 4, frames)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


def interleave(channels: list[bytes]) -> bytes:
    """Per-channel mu-law bytes to one interleaved block (the shorter ones padded with silence)."""
    if len(channels) == 1:
        return channels[0]
    n = max(len(c) for c in channels)
    out = bytearray(n * len(channels))
    for i, c in enumerate(channels):
        out[i :: len(channels)] = c.ljust(n, bytes([MULAW_SILENCE]))
    return bytes(out)


def mulaw_wav_bytes(channels: list[bytes]) -> bytes:
    """A whole 8 kHz mu-law WAV file from per-channel mu-law bytes."""
    frames = max(len(c) for c in channels)
    return mulaw_header(len(channels), frames) + interleave(channels)


def write_mulaw_wav(path: str | os.PathLike[str], channels: list[bytes]) -> None:
    Path(path).write_bytes(mulaw_wav_bytes(channels))


def _lowpass(samples: np.ndarray, rate: int) -> np.ndarray:
    """Anti-alias before downsampling (``audioop.ratecv`` only interpolates): windowed sinc at 3.6 kHz."""
    taps = 101
    t = np.arange(taps) - (taps - 1) / 2
    kernel = np.sinc(2 * 3600 / rate * t) * np.hamming(taps)
    kernel /= kernel.sum()
    filtered = np.convolve(samples.astype(np.float64), kernel, mode="same")
    return np.clip(np.rint(filtered), -32768, 32767).astype("<i2")


def to_twilio_mulaw(path: str | os.PathLike[str]) -> list[bytes]:
    """Any WAV (PCM of any width, float, A-law, mu-law; any rate) as 8 kHz mu-law bytes per channel.

    An 8 kHz mu-law file is already what Twilio sends: its bytes are de-interleaved untouched.
    Anything else is decoded by libsndfile, low-passed, resampled and encoded once.
    """
    wav = read_wav(path)
    if wav.is_mulaw_8k:
        return [wav.channel_bytes(c) for c in range(wav.channels)]
    import soundfile

    try:
        # float, then scaled ourselves: libsndfile does not scale float files read as integers.
        samples, rate = soundfile.read(io.BytesIO(wav.raw), dtype="float32", always_2d=True)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise WavError(f"{path}: {exc}") from None
    pcm = np.clip(np.rint(samples * 32768.0), -32768, 32767).astype("<i2")
    out = []
    for c in range(pcm.shape[1]):
        channel = pcm[:, c]
        if rate > SAMPLE_RATE:
            channel = _lowpass(channel, rate)
        mono = np.ascontiguousarray(channel, dtype="<i2").tobytes()
        if rate != SAMPLE_RATE:
            mono, _ = audioop.ratecv(mono, 2, 1, rate, SAMPLE_RATE, None)
        out.append(pcm16_to_mulaw(mono))
    return out


def frames(audio: bytes, size: int = FRAME_BYTES) -> list[bytes]:
    """``audio`` cut into Twilio-sized frames (20 ms of 8 kHz mu-law by default)."""
    return [audio[i : i + size] for i in range(0, len(audio), size)]


__all__ = [
    "FRAME_BYTES",
    "FRAME_SECONDS",
    "MULAW_HEADER_BYTES",
    "MULAW_SILENCE",
    "SAMPLE_RATE",
    "WHISPER_RATE",
    "Upsampler",
    "Wav",
    "WavError",
    "frames",
    "interleave",
    "mulaw_header",
    "mulaw_to_float",
    "mulaw_to_pcm16",
    "mulaw_wav_bytes",
    "parse_wav",
    "pcm16_to_float",
    "pcm16_to_mulaw",
    "read_wav",
    "silence",
    "to_16k",
    "to_twilio_mulaw",
    "write_mulaw_wav",
]
