"""A repeating decode is decoded again with a repetition penalty (issue #11): real model, real calls.

On the robotic set, base read "It is the one ending in seven four two, sent on Monday." (espeak-ng)
as "... ending in 3, 4, 2, 3, 2, 3, 2, 3, 2": the card-number exception kept the looping digits and
the rest of the turn was lost. A card number the caller really repeats must survive the retry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache

import numpy as np
import pytest

from bridge.audio import mulaw_to_pcm16, read_wav
from bridge.embedded.engine import (
    LOOP_RETRY_PENALTY,
    WhisperEngine,
    cut_repeats,
    load_engine,
    loop_level,
    plain_word,
)
from bridge.embedded.segmenter import SegmentClosed, Segmenter
from tests.support import FIXTURES

pytestmark = pytest.mark.timeout(180)


@cache
def base() -> WhisperEngine:
    return load_engine("base", workers=1)


def turn_audio(path: str, text_start: str) -> tuple[np.ndarray, float]:
    """The live segment holding the turn that starts with ``text_start``, cut as the recognizer cuts."""
    doc = json.loads((FIXTURES / f"{path}.json").read_text())
    turn = next(t for t in doc["turns"] if t["text"].startswith(text_start))
    channel = doc["channels"].index(turn["track"])
    wav = read_wav(FIXTURES / f"{path}.wav")
    seg = Segmenter(8000, endpoint_s=0.3, max_segment_s=base().max_segment_seconds)
    closed = [e for e in seg.feed(mulaw_to_pcm16(wav.channel_bytes(channel))) if isinstance(e, SegmentClosed)]
    hit = next(e for e in closed if e.has_speech and e.start < turn["end"] and turn["start"] < e.end)
    return hit.audio, hit.end - hit.start


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def test_repeats_sees_digit_loops_that_the_card_rule_keeps() -> None:
    loop = "It is the one ending in 3, 4, 2, 3, 2, 3, 2, 3, 2"
    assert cut_repeats(loop) == loop  # under the card rule: could be a number
    assert loop_level(loop) == 1
    assert loop_level("It is the one ending in 742, sent on Monday.") == 0
    assert loop_level("thank you. thank you. thank you.") == 2
    assert loop_level("it is 411 " + "11 " * 10) == 2  # past any card number


def test_regression_a_digit_loop_is_decoded_again_and_the_turn_kept() -> None:
    audio, duration = turn_audio("sets/robotic/r03_delivery", "It is the one ending")
    hyp = base().transcribe(audio, beam_size=5, context_seconds=base().partial_context(duration))
    assert loop_level(hyp.text) == 0, hyp.text
    assert len(digits(hyp.text)) <= 4, hyp.text
    said = [plain_word(w) for w in hyp.text.split()]
    assert said[:6] == ["it", "is", "the", "one", "ending", "in"], hyp.text
    assert len(said) >= 9, hyp.text  # words after the number were heard, not lost to the loop


def scripted(engine: WhisperEngine, *texts: str) -> list[float]:
    """Make ``engine``'s decodes return ``texts`` in turn; the penalties asked for are recorded."""
    penalties: list[float] = []
    replies = iter(texts)

    def run(encoded: object, prompt: list[int], seconds: float, beam: int, penalty: float) -> Decode:
        penalties.append(penalty)
        text = next(replies)
        return engine.tokenizer.encode(" " + text), text, 0.9, 0.0

    engine._run = run  # type: ignore[method-assign]
    return penalties


Decode = tuple[list[int], str, float, float]


@pytest.fixture
def engine() -> Iterator[WhisperEngine]:
    fresh = WhisperEngine.__new__(WhisperEngine)
    fresh.tokenizer = base().tokenizer
    yield fresh


def prompt() -> list[int]:
    """``<|startofprev|><|startoftranscript|><|notimestamps|>``: no forced prefix."""
    t = base().tokenizer
    return [t.sot_prev, t.sot, t.no_timestamps]


def test_the_retry_is_taken_when_the_loop_goes_away(engine: WhisperEngine) -> None:
    penalties = scripted(engine, "ending in 3, 4, 2, 3, 2, 3, 2, 3, 2", "ending in 3-4-2, sent on Monday.")
    _, text, _, _ = engine._generate(None, prompt(), 3.0, 5)
    assert text == "ending in 3-4-2, sent on Monday."
    assert penalties == [1.0, LOOP_RETRY_PENALTY]


def test_a_card_number_heard_again_keeps_the_first_decode(engine: WhisperEngine) -> None:
    card = "It is 4, " + "1, " * 14 + "1."  # read digit by digit: "1" repeats as a loop would
    penalties = scripted(engine, card, "It is 4, " + "1, " * 12 + "1.")
    _, text, _, _ = engine._generate(None, prompt(), 6.0, 5)
    assert text == card
    assert len(penalties) == 2


def test_regression_a_card_past_its_length_takes_the_retry_that_fits_a_card(engine: WhisperEngine) -> None:
    # card_call: base read the card as "411" and "11" ten times, which the loop guard cut to
    # "411 11"; the penalised decode, "4111 1111 1111 1111 1111", loops less and is kept whole.
    penalties = scripted(engine, "Sure it is 411" + " 11" * 10, "Sure, it is 4111 1111 1111 1111 1111")
    _, text, _, _ = engine._generate(None, prompt(), 5.6, 5)
    assert text == "Sure, it is 4111 1111 1111 1111 1111"
    assert len(penalties) == 2


def test_no_retry_without_a_repetition(engine: WhisperEngine) -> None:
    penalties = scripted(engine, "It is the one ending in 742, sent on Monday.")
    _, text, _, _ = engine._generate(None, prompt(), 3.0, 5)
    assert text == "It is the one ending in 742, sent on Monday."
    assert penalties == [1.0]


def test_a_repetition_inside_the_forced_prefix_asks_for_no_retry(engine: WhisperEngine) -> None:
    prefix = engine.tokenizer.encode(" 1111 1111 1111 1111")
    penalties = scripted(engine, "1111 1111 1111 1111 thanks")
    engine._generate(None, [*prompt(), *prefix], 3.0, 5)
    assert penalties == [1.0]


def test_partials_do_not_pay_for_a_second_decode(engine: WhisperEngine) -> None:
    penalties = scripted(engine, "ending in 3, 4, 2, 3, 2, 3, 2, 3, 2")
    _, text, _, _ = engine._generate(None, prompt(), 3.0, 1, retry=False)
    assert penalties == [1.0]
    assert text == "ending in 3, 4, 2, 3, 2, 3, 2, 3, 2"  # shown as decoded; the final decodes again
