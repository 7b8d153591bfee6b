"""Whisper batch engine decoding: a window that loops is decoded again, the same way every run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.audio import read_wav
from bridge.batch.whisper import WhisperBatchEngine, _Decoded

#: A robotic caller whose second window the base model's beam search decodes with its last sentence
#: twice ("It is the one ending in 742, sent on Monday." x2).
LOOPING_CALL = Path(__file__).parents[2] / "fixtures" / "sets" / "robotic" / "r03_delivery.wav"


class _Counting(WhisperBatchEngine):
    """Records every decode's repetition penalty."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.penalties: list[float] = []

    def _generate(self, encoded: Any, seconds: float, penalty: float = 1.0) -> _Decoded:
        self.penalties.append(penalty)
        return super()._generate(encoded, seconds, penalty)


@pytest.fixture(scope="module")
def engine() -> _Counting:
    return _Counting("base", beam_size=5, cpu_threads=2)


def _caller_text(engine: WhisperBatchEngine) -> str:
    channel = read_wav(LOOPING_CALL).channel_16k(0)
    words = [w for window in engine.windows(channel) for w in engine.decode_window(channel, window)]
    return " ".join(w.punctuated_word or w.word for w in words)


def test_regression_the_batch_pass_comes_out_the_same_every_run(engine: _Counting) -> None:
    # The retry used to sample at a higher temperature; CTranslate2's seed is per thread, so the
    # same recording came out differently from run to run.
    engine.penalties.clear()
    first = _caller_text(engine)
    assert engine.penalties.count(1.0) == len(engine.penalties) - engine.penalties.count(engine.retry_penalty)
    assert engine.retry_penalty in engine.penalties  # the looping window was decoded again
    assert all(_caller_text(engine) == first for _ in range(2))


def test_a_looping_sentence_is_kept_once(engine: _Counting) -> None:
    text = _caller_text(engine).lower()
    assert text.count("sent on monday") == 1
    assert "742" in text and "wrong house" in text
