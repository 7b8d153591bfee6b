"""The per-call recording: frames placed by Twilio timestamp, legs aligned, header readable by sox."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from bridge.call.recording import CallRecording


def _read(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    fmt_at = data.index(b"fmt ") + 8
    tag, channels, rate = struct.unpack("<HHI", data[fmt_at : fmt_at + 8])
    assert tag == 7 and rate == 8000
    data_at = data.index(b"data")
    size = struct.unpack("<I", data[data_at + 4 : data_at + 8])[0]
    body = data[data_at + 8 :]
    assert len(body) == size
    riff_size = struct.unpack("<I", data[4:8])[0]
    assert riff_size == len(data) - 8
    return channels, size // channels, body


def test_two_tracks_interleaved_and_aligned_by_timestamp(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "c.wav", ["inbound", "outbound"])
    for i in range(100):  # 2 s
        rec.write("inbound", i * 160, bytes([1]) * 160)
        rec.write("outbound", i * 160, bytes([2]) * 160)
    assert rec.close() == pytest.approx(2.0)
    channels, frames, body = _read(tmp_path / "c.wav")
    assert (channels, frames) == (2, 16000)
    assert body[0::2] == bytes([1]) * 16000
    assert body[1::2] == bytes([2]) * 16000


def test_missing_frames_become_mulaw_silence_in_place(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "gap.wav", ["inbound"])
    rec.write("inbound", 0, b"\x10" * 160)
    rec.write("inbound", 3 * 160, b"\x20" * 160)  # frames 1 and 2 lost
    rec.close()
    _, frames, body = _read(tmp_path / "gap.wav")
    assert frames == 4 * 160
    assert body[160:480] == b"\xff" * 320
    assert body[480:] == b"\x20" * 160
    assert rec.gaps_filled == 320


def test_duplicate_and_late_frames_do_not_shift_audio(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "dup.wav", ["inbound"])
    rec.write("inbound", 0, b"\x01" * 160)
    rec.write("inbound", 160, b"\x02" * 160)
    rec.write("inbound", 160, b"\x02" * 160)  # re-sent
    rec.write("inbound", 320, b"\x03" * 160)
    rec.close()
    _, frames, body = _read(tmp_path / "dup.wav")
    assert frames == 480
    assert body == b"\x01" * 160 + b"\x02" * 160 + b"\x03" * 160


def test_a_leg_that_goes_quiet_is_padded_and_memory_stays_bounded(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "quiet.wav", ["inbound", "outbound"])
    for i in range(50 * 10):  # 10 s of inbound only
        rec.write("inbound", i * 160, b"\x05" * 160)
    assert max(len(b) for b in rec._pending.values()) <= 3 * 8000
    assert rec.close() == pytest.approx(10.0)
    _, frames, body = _read(tmp_path / "quiet.wav")
    assert frames == 80000
    assert set(body[1::2]) == {0xFF}


@pytest.mark.skipif(shutil.which("soxi") is None, reason="sox is installed by deploy/system-deps.sh")
def test_sox_reads_the_recording_with_the_right_duration(tmp_path: Path) -> None:
    rec = CallRecording(tmp_path / "sox.wav", ["inbound", "outbound"])
    for i in range(50 * 3):
        rec.write("inbound", i * 160, b"\x7f" * 160)
        rec.write("outbound", i * 160, b"\x7f" * 160)
    rec.close()
    out = subprocess.run(["soxi", "-D", str(tmp_path / "sox.wav")], capture_output=True, text=True, check=True)
    assert float(out.stdout) == pytest.approx(3.0)
    chans = subprocess.run(["soxi", "-c", str(tmp_path / "sox.wav")], capture_output=True, text=True, check=True)
    assert chans.stdout.strip() == "2"
