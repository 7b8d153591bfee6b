"""The one WER normalisation (Whisper's English normaliser): casing, punctuation and number spelling
are not recognition errors."""

from __future__ import annotations

import pytest

from bridge.wer import corpus_wer, normalize, wer


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Customer support, how can I help?", "customer support how can i help"),
        ("My order number is 45729.", "my order number is four five seven two nine"),
        ("I have been waiting for 20 minutes", "I have been waiting for twenty minutes"),
        ("It's the 3rd time", "it's the third time"),
        ("That is 100% right", "that is one hundred percent right"),
        ("It costs $5", "it costs five dollars"),
        ("1,250 people", "one thousand two hundred fifty people"),
        ("twenty-one", "twenty one"),
        ("Five five five two one eight four four zero nine.", "5552184409"),
        ("Okay, Mr. Smith", "okay mister smith"),
        ("I\u2019m here", "i'm here"),
    ],
)
def test_equivalent_spellings_score_zero(a: str, b: str) -> None:
    assert normalize(a) == normalize(b)
    assert wer(a, b).rate == 0.0


def test_counts_each_kind_of_edit() -> None:
    r = wer("the cat sat on the mat", "the cat sat on a mat today")
    assert (r.substitutions, r.deletions, r.insertions) == (1, 0, 1)
    assert r.ref_words == 6 and r.rate == pytest.approx(2 / 6)
    r = wer("please reset my password", "reset password")
    assert (r.substitutions, r.deletions, r.insertions) == (0, 2, 0)


def test_empty_sides() -> None:
    assert wer("", "").rate == 0.0
    assert wer("", "hello").rate == 1.0
    assert wer("hello there", "").rate == 1.0


def test_corpus_wer_pools_words() -> None:
    total = corpus_wer([("a b c d", "a b c d"), ("e f", "e x")])
    assert total.errors == 1 and total.ref_words == 6
