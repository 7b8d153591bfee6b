"""Telephony audio: G.711 WAV read by hand (stdlib ``wave`` refuses tag 7) and written byte-exact,
other WAVs transcoded once, bad files refused clearly."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile

from bridge import audio
from bridge.audio import WavError, parse_wav, read_wav, to_twilio_mulaw
from bridge.transcripts import tracks_for
from tests.support import FIXTURES


def _wav(tag: int, channels: int, bits: int, data: bytes, rate: int = 8000) -> bytes:
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_stereo_mulaw_fixture() -> None:
    rec = read_wav(FIXTURES / "calls" / "short_call.wav")
    assert rec.channels == 2 and rec.sample_rate == 8000 and rec.is_mulaw_8k
    assert rec.duration == pytest.approx(14.796, abs=0.01)
    x = rec.channel_16k(1)
    assert x.dtype == np.float32 and x.size == pytest.approx(2 * rec.frames, abs=1)
    assert 0.0 < float(np.abs(x).max()) <= 1.0


def test_mulaw_decoding() -> None:
    # 0xFF and 0x7F are the two zeros; 0x80 / 0x00 the largest positive / negative values.
    rec = parse_wav(_wav(7, 1, 8, bytes([0xFF, 0x7F, 0x80, 0x00])))
    v = rec.samples()[:, 0]
    assert v[0] == 0.0 and v[1] == 0.0
    assert v[2] == pytest.approx(32124 / 32768) and v[3] == pytest.approx(-32124 / 32768)


def test_pcm16_and_deinterleave() -> None:
    data = np.array([1000, -1000, 2000, -2000], dtype="<i2").tobytes()
    rec = parse_wav(_wav(1, 2, 16, data))
    assert rec.samples().shape == (2, 2)
    assert rec.samples()[:, 0].tolist() == pytest.approx([1000 / 32768, 2000 / 32768])
    assert rec.channel_bytes(1) == np.array([-1000, -2000], dtype="<i2").tobytes()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "not a RIFF/WAVE"),
        (b"\x00garbage" * 100, "not a RIFF/WAVE"),
        (b"RIFF\x10\x00\x00\x00WAVEjunk\x04\x00\x00\x00abcd", "missing fmt or data"),
        (_wav(7, 12, 8, b"\x00" * 12), "12 channels"),
        (_wav(7, 1, 8, b"\x00" * 12, rate=10), "10 Hz"),
    ],
)
def test_bad_files_are_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(WavError, match=reason):
        parse_wav(raw, "x.wav")


def test_unsupported_encoding_for_samples() -> None:
    with pytest.raises(WavError, match="unsupported encoding"):
        parse_wav(_wav(3, 1, 32, b"\x00" * 16)).samples()


def test_missing_file() -> None:
    with pytest.raises(WavError, match=r"nope\.wav"):
        read_wav("/nonexistent/nope.wav")


def test_written_wav_reads_back_byte_exact(tmp_path: object) -> None:
    caller, agent = bytes(range(256)) * 10, bytes(range(255, -1, -1)) * 9
    raw = audio.mulaw_wav_bytes([caller, agent])
    wav = parse_wav(raw)
    assert wav.is_mulaw_8k and wav.channels == 2
    assert wav.channel_bytes(0) == caller
    assert wav.channel_bytes(1) == agent.ljust(len(caller), b"\xff")
    # sox/libsndfile read the header we write
    data, rate = soundfile.read(__import__("io").BytesIO(raw), dtype="int16")
    assert rate == 8000 and data.shape == (len(caller), 2)


def test_mulaw_8k_is_passed_through_untouched() -> None:
    channels = to_twilio_mulaw(FIXTURES / "calls" / "short_call.wav")
    wav = read_wav(FIXTURES / "calls" / "short_call.wav")
    assert channels == [wav.channel_bytes(0), wav.channel_bytes(1)]


def test_other_encodings_are_transcoded_once(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "tone.wav"
    t = np.arange(16000) / 16000
    soundfile.write(path, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, subtype="FLOAT")
    (mono,) = to_twilio_mulaw(path)
    assert len(mono) == pytest.approx(8000, abs=2)  # 1 s at 8 kHz
    decoded = audio.mulaw_to_float(mono)
    assert 0.4 < float(np.abs(decoded).max()) < 0.6


def test_tracks_by_channel() -> None:
    assert tracks_for(2) == ["inbound", "outbound"]
    assert tracks_for(1) == ["inbound"]
    assert tracks_for(1, ["outbound"]) == ["outbound"]
