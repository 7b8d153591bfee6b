"""Short finals decoded after the same speaker's earlier audio (issue #11): real model, real calls.

A "Yes." decoded alone comes out as "Yeah." on these voices; after the speaker's previous answer,
with its text forced as the prefix, it is heard right, and an echo of the lead falls back.
"""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest

from bridge.audio import mulaw_to_pcm16, read_wav
from bridge.embedded.engine import SAMPLE_RATE, EngineWord, WhisperEngine, load_engine, plain_word
from bridge.embedded.segmenter import SegmentClosed, Segmenter
from bridge.embedded.session import (
    SHORT_FINAL_S,
    UNSURE_FINAL,
    decode_final,
    lead_context,
    sentence,
    without_lead,
)
from tests.support import FIXTURES

pytestmark = pytest.mark.timeout(180)


@cache
def base() -> WhisperEngine:
    return load_engine("base", workers=1)


def segments(call: str, channel: int, fixture_set: str = "short_answers") -> list[SegmentClosed]:
    """The caller's answers in one call, cut as the live recognizer cuts them (300 ms endpoint).

    Only segments holding a turn of the script count (the line noise opens segments of its own).
    """
    doc = json.loads((FIXTURES / "sets" / fixture_set / f"{call}.json").read_text())
    track = doc["channels"][channel]
    turns = [(t["start"], t["end"]) for t in doc["turns"] if t["track"] == track]
    wav = read_wav(FIXTURES / "sets" / fixture_set / f"{call}.wav")
    seg = Segmenter(8000, endpoint_s=0.3, max_segment_s=base().max_segment_seconds)
    events = [e for e in seg.feed(mulaw_to_pcm16(wav.channel_bytes(channel))) if isinstance(e, SegmentClosed)]
    return [e for e in events if e.has_speech and any(e.start < b and a < e.end for a, b in turns)]


def words(text: str) -> list[str]:
    return [plain_word(w) for w in text.split() if plain_word(w)]


def test_a_short_yes_after_the_speakers_earlier_answer_is_heard_as_yes() -> None:
    sure, yes = segments("s01_survey", 0)[:2]  # the caller: "Sure." then "Yes."
    assert yes.end - yes.start < SHORT_FINAL_S
    first = base().transcribe(sure.audio, beam_size=5)
    assert words(first.text) == ["sure"]
    recent = [(sure.audio, first.words)]
    hyp, in_context = decode_final(base(), yes.audio, yes.end - yes.start, recent, beam_size=5, hotwords="",
                                   previous=first.text)  # fmt: skip
    assert in_context
    assert words(hyp.text) == ["yes"], hyp.text
    span = yes.audio.size / SAMPLE_RATE
    assert hyp.words and all(0.0 <= w.start <= w.end <= span for w in hyp.words)


def test_an_echo_of_the_lead_falls_back_to_decoding_the_segment_alone() -> None:
    sure = segments("s01_survey", 0)[0]
    first = base().transcribe(sure.audio, beam_size=5)
    # The same words again: the contextual decode can only repeat the lead, so it gives up...
    assert base().transcribe_after(sure.audio, sure.audio, first.text, beam_size=5) is None
    # ...and the final is decoded alone, as before the lever.
    recent = [(sure.audio, first.words)]
    hyp, in_context = decode_final(base(), sure.audio, sure.end - sure.start, recent, beam_size=5, hotwords="",
                                   previous=first.text)  # fmt: skip
    assert not in_context
    assert words(hyp.text) == ["sure"]


def test_an_unsure_final_is_decoded_again_after_the_speakers_earlier_turn() -> None:
    # An espeak-ng caller: "It is the one ending in seven four two, sent on Monday." decoded alone
    # comes out unsure and wrong ("... 3-4-2, and on my main."); after the caller's first turn the
    # decoder has heard the voice, and the number comes out right.
    first, second, third = segments("r03_delivery", 0, "robotic")
    duration = second.end - second.start
    assert duration >= SHORT_FINAL_S
    before = base().transcribe(first.audio, beam_size=5)
    alone = base().transcribe(second.audio, beam_size=5, previous=before.text)
    assert alone.confidence < UNSURE_FINAL and "742" not in alone.text
    hyp, in_context = decode_final(base(), second.audio, duration, [(first.audio, before.words)], beam_size=5,
                                   hotwords="", previous=before.text)  # fmt: skip
    assert in_context
    assert "742" in hyp.text, hyp.text
    # A final the decoder is sure of alone is not decoded twice.
    sure, in_context = decode_final(base(), third.audio, third.end - third.start, [(second.audio, hyp.words)],
                                    beam_size=5, hotwords="", previous=hyp.text)  # fmt: skip
    assert not in_context
    assert words(sure.text) == ["that", "would", "be", "wonderful", "thank", "you"]


def test_silence_after_the_lead_adds_nothing() -> None:
    sure = segments("s01_survey", 0)[0]
    first = base().transcribe(sure.audio, beam_size=5)
    assert base().transcribe_after(np.zeros(SAMPLE_RATE, np.float32), sure.audio, first.text, beam_size=5) is None


def test_the_lead_is_the_latest_audio_cut_between_words() -> None:
    def final(seconds: float, *said: tuple[str, float, float]) -> tuple[np.ndarray, tuple[EngineWord, ...]]:
        return np.ones(int(seconds * SAMPLE_RATE), np.float32), tuple(EngineWord(t, a, b, 1.0) for t, a, b in said)

    older = final(3.0, ("Good", 0.3, 0.6), ("morning,", 0.7, 1.1), ("this", 1.5, 1.8), ("is", 1.9, 2.0))
    newer = final(1.0, ("Sure.", 0.3, 0.6))
    assert lead_context([], 4.0) is None
    audio, text = lead_context([older, newer], 3.0) or (None, "")
    assert text == "this is. Sure."
    assert audio is not None and audio.size == int((3.0 - 1.3) * SAMPLE_RATE) + newer[0].size
    audio, text = lead_context([older, newer], 5.0) or (None, "")
    assert text == "Good morning, this is. Sure." and audio is not None and audio.size == 4 * SAMPLE_RATE


def test_each_final_of_the_lead_ends_with_a_stop() -> None:
    # After "Sure" (no stop) base hears the caller's next "Yes." as "Yeah."; after "Sure." as "Yes.".
    said = (EngineWord("Sure", 0.3, 0.6, 1.0),)
    assert sentence(said) == "Sure."
    assert sentence((EngineWord("Really?", 0.3, 0.6, 1.0),)) == "Really?"
    assert sentence(()) == ""
    audio = np.zeros(SAMPLE_RATE, np.float32)
    assert (lead_context([(audio, said), (audio, said)], 4.0) or (None, ""))[1] == "Sure. Sure."


def test_regression_the_lead_is_taken_out_of_the_previous_words_despite_its_added_stop() -> None:
    # The lead's finals gain a stop, so an exact string match never found them in the previous words,
    # and the lead was given to the decoder twice (prompt and prefix).
    assert without_lead("Good morning. Sure I can do that", "Sure I can do that.") == "Good morning."
    assert without_lead("Good morning. Sure", "I can.") == "Good morning. Sure"
    assert without_lead("", "Yes.") == ""
