"""Silencing spans of one channel of a recording file: every other byte stays as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bridge.audio import MULAW_SILENCE, mulaw_wav_bytes, parse_wav, read_wav
from bridge.redact.audio import redact_file, silence_spans, unredacted_path, wav_seconds
from bridge.transcripts import Redaction


def _noise(seconds: float, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 0x7F, int(seconds * 8000), dtype=np.uint8).tobytes()


def test_a_span_is_silenced_on_its_track_only() -> None:
    caller, agent = _noise(4.0, 1), _noise(4.0, 2)
    raw = mulaw_wav_bytes([caller, agent])
    out, seconds = silence_spans(raw, [Redaction(track="inbound", start=1.0, end=2.5, kind="card_number")],
                                 ["inbound", "outbound"])  # fmt: skip
    wav = parse_wav(out)
    assert seconds == pytest.approx(1.5)
    assert out[:58] == raw[:58] and len(out) == len(raw)  # header untouched
    assert wav.channel_bytes(1) == agent
    after = wav.channel_bytes(0)
    assert set(after[8000:20000]) == {MULAW_SILENCE}
    assert after[:8000] == caller[:8000] and after[20000:] == caller[20000:]


def test_a_span_of_a_track_the_recording_lacks_is_skipped_and_spans_are_clipped() -> None:
    mono = mulaw_wav_bytes([_noise(1.0, 3)])
    out, seconds = silence_spans(mono, [Redaction(track="outbound", start=0.0, end=1.0, kind="card_cvv"),
                                        Redaction(track="inbound", start=0.5, end=9.0, kind="card_cvv")],
                                 ["inbound"])  # fmt: skip
    assert seconds == pytest.approx(0.5)
    assert set(parse_wav(out).channel_bytes(0)[4000:]) == {MULAW_SILENCE}


def test_pcm16_recordings_get_zero_samples(tmp_path: Path) -> None:
    import soundfile

    path = tmp_path / "twilio.wav"
    x = np.random.default_rng(4).uniform(-0.5, 0.5, (16000, 2)).astype(np.float32)
    soundfile.write(path, x, 8000, subtype="PCM_16")
    out, _ = silence_spans(path.read_bytes(), [Redaction(track="outbound", start=0.0, end=1.0, kind="ssn")],
                           ["inbound", "outbound"])  # fmt: skip
    samples = parse_wav(out).samples()
    assert not samples[:8000, 1].any() and samples[8000:, 1].any() and samples[:, 0].any()


def test_redact_file_replaces_the_original_unless_asked_to_keep_it(tmp_path: Path) -> None:
    path = tmp_path / "call.wav"
    original = mulaw_wav_bytes([_noise(2.0, 5), _noise(2.0, 6)])
    path.write_bytes(original)
    spans = [Redaction(track="inbound", start=0.0, end=1.0, kind="card_number")]
    redact_file(path, spans, ["inbound", "outbound"], keep_original=False)
    assert [p.name for p in tmp_path.iterdir()] == ["call.wav"]  # no copy, no temporary file left
    assert set(read_wav(path).channel_bytes(0)[:8000]) == {MULAW_SILENCE}
    path.write_bytes(original)
    redact_file(path, spans, ["inbound", "outbound"], keep_original=True)
    assert unredacted_path(path).read_bytes() == original
    assert wav_seconds(path) == pytest.approx(2.0)
