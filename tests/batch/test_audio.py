"""Recording parsing: mu-law/PCM WAV by hand (stdlib ``wave`` refuses tag 7), bad files refused clearly."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from bridge.batch import BadRecording, parse_wav, read_recording, tracks_for

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _wav(tag: int, channels: int, bits: int, data: bytes, rate: int = 8000) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_stereo_mulaw_fixture() -> None:
    rec = read_recording(FIXTURES / "calls" / "short_call.wav")
    assert rec.channels == 2 and rec.sample_rate == 8000
    assert rec.duration == pytest.approx(14.796, abs=0.01)
    x = rec.channel_16k(1)
    assert x.dtype == np.float32 and x.size == pytest.approx(2 * rec.samples.shape[0], abs=1)
    assert 0.0 < float(np.abs(x).max()) <= 1.0


def test_mulaw_decoding() -> None:
    # 0xFF and 0x7F are the two zeros; 0x80 / 0x00 the largest positive / negative values.
    rec = parse_wav(_wav(7, 1, 8, bytes([0xFF, 0x7F, 0x80, 0x00])))
    v = rec.samples[:, 0]
    assert v[0] == 0.0 and v[1] == 0.0
    assert v[2] == pytest.approx(32124 / 32768) and v[3] == pytest.approx(-32124 / 32768)


def test_pcm16_and_deinterleave() -> None:
    data = np.array([1000, -1000, 2000, -2000], dtype="<i2").tobytes()
    rec = parse_wav(_wav(1, 2, 16, data))
    assert rec.samples.shape == (2, 2)
    assert rec.samples[:, 0].tolist() == pytest.approx([1000 / 32768, 2000 / 32768])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not a RIFF/WAVE"),
        (b"\x00garbage" * 100, "not a RIFF/WAVE"),
        (b"RIFF\x10\x00\x00\x00WAVEjunk\x04\x00\x00\x00abcd", "missing fmt or data"),
        (_wav(3, 1, 32, b"\x00" * 16), "unsupported encoding"),
        (_wav(7, 6, 8, b"\x00" * 12), "6 channels"),
    ],
)
def test_bad_files_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(BadRecording, match=reason):
        parse_wav(raw, "x.wav")


def test_missing_file() -> None:
    with pytest.raises(BadRecording, match=r"nope\.wav"):
        read_recording("/nonexistent/nope.wav")


def test_tracks_by_channel() -> None:
    assert tracks_for(2) == ["inbound", "outbound"]
    assert tracks_for(1) == ["inbound"]
    assert tracks_for(1, ["outbound"]) == ["outbound"]
