"""Whisper batch engine: only speech reaches the model, packed into few windows, words on the recording clock."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bridge.audio import WAVE_FORMAT_PCM, Wav
from bridge.audio import WHISPER_RATE as TARGET_RATE
from bridge.audio import read_wav as read_recording
from bridge.batch.whisper import WhisperBatchEngine
from bridge.embedded.packing import Piece, Window, pack_spans, speech_spans
from tests.support import SHORT_CALL as CALL


def _recording(channel: np.ndarray) -> Wav:
    """A 16 kHz 16-bit PCM recording of one channel."""
    pcm = (np.clip(channel, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return Wav(WAVE_FORMAT_PCM, 1, TARGET_RATE, 16, pcm)


@pytest.fixture(scope="module")
def engine() -> WhisperBatchEngine:
    return WhisperBatchEngine("tiny.en", beam_size=5, cpu_threads=2)


def _turn(channel: int, start: float, end: float) -> np.ndarray:
    """One turn of the short fixture call at 16 kHz (times from its .json)."""
    x = read_recording(CALL).channel_16k(channel)
    return x[int(start * TARGET_RATE) : int(end * TARGET_RATE)]


def test_vad_finds_each_turn_of_a_channel_and_not_the_other_partys() -> None:
    agent = read_recording(CALL).channel_16k(1)  # speaks 0.5-3.8 and 8.49-11.8
    spans = speech_spans(agent)
    assert len(spans) == 2
    (a0, a1), (b0, b1) = spans
    assert a0 <= 0.6 and 3.6 <= a1 < 4.6
    assert 7.7 < b0 <= 8.6 and 11.6 <= b1 < 12.6


def test_silence_has_no_speech() -> None:
    assert speech_spans(np.zeros(TARGET_RATE * 5, dtype=np.float32)) == []


def test_packing_keeps_order_fills_windows_and_maps_times_back() -> None:
    audio = np.zeros(TARGET_RATE * 100, dtype=np.float32)
    windows = pack_spans([(10.0, 13.0), (50.0, 54.0), (90.0, 95.0)], audio, longest=9.0, seam=0.5)
    assert [[p.start for p in w.pieces] for w in windows] == [[10.0, 50.0], [90.0]]
    w = windows[0]
    assert w.pieces == [Piece(0.0, 10.0, 3.0), Piece(3.5, 50.0, 4.0)]
    assert w.content == pytest.approx(7.5)
    assert w.to_recording(1.0) == pytest.approx(11.0)
    assert w.to_recording(4.5) == pytest.approx(51.0)
    assert w.to_recording(3.1) == pytest.approx(13.0)  # in the seam, nearer the first piece's end
    assert w.to_recording(3.4) == pytest.approx(50.0)  # nearer the second piece's start


def test_window_audio_puts_each_piece_at_its_offset() -> None:
    audio = np.arange(TARGET_RATE * 4, dtype=np.float32)
    w = Window([Piece(0.0, 1.0, 0.5), Piece(1.0, 3.0, 0.5)])
    out = w.audio(audio)
    assert out.size == int(1.5 * TARGET_RATE)
    assert out[0] == TARGET_RATE and out[int(0.75 * TARGET_RATE)] == 0.0
    assert out[TARGET_RATE] == 3 * TARGET_RATE


def test_a_span_longer_than_a_window_is_cut() -> None:
    audio = np.random.default_rng(0).standard_normal(TARGET_RATE * 30).astype(np.float32)
    windows = pack_spans([(0.0, 30.0)], audio, longest=9.0)
    assert len(windows) >= 4 and all(w.content <= 9.0 for w in windows)
    covered = sorted((p.start, p.start + p.length) for w in windows for p in w.pieces)
    assert covered[0][0] == 0.0 and covered[-1][1] == pytest.approx(30.0)
    assert all(a[1] == pytest.approx(b[0]) for a, b in itertools.pairwise(covered))  # nothing lost


async def test_packed_turns_get_word_times_where_they_were_said(engine: WhisperBatchEngine) -> None:
    # Two caller turns 40 s apart in a mostly silent 80 s channel: one window, words at their real times.
    first = _turn(0, 4.4, 7.9)  # "I forgot my password and cannot log in."
    second = _turn(0, 12.4, 14.2)  # "Thank you, goodbye."
    channel = np.zeros(TARGET_RATE * 80, dtype=np.float32)
    channel[20 * TARGET_RATE : 20 * TARGET_RATE + first.size] = first
    channel[60 * TARGET_RATE : 60 * TARGET_RATE + second.size] = second
    assert len(engine.windows(channel)) == 1
    rec = _recording(channel)
    utts = await engine.transcribe(rec, ["inbound"])
    assert len(utts) == 2  # split where the caller was silent, not glued into one turn
    assert "password" in utts[0].text.lower() and "goodbye" in utts[1].text.lower()
    assert 20.0 <= utts[0].start and utts[0].end <= 20.0 + first.size / TARGET_RATE + 0.3
    assert 60.0 <= utts[1].start and utts[1].end <= 60.0 + second.size / TARGET_RATE + 0.3
    pw = next(w for w in utts[0].words if w.word == "password")
    assert 20.5 < pw.start < pw.end < 23.0  # spoken ~1.3-2.0 s into the turn


async def test_a_silent_channel_costs_no_decode(engine: WhisperBatchEngine) -> None:
    rec = _recording(np.zeros(TARGET_RATE * 20, dtype=np.float32))
    assert engine.windows(rec.channel_16k(0)) == []
    assert await engine.transcribe(rec, ["inbound"]) == []
