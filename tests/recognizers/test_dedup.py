"""De-duplication by audio time (:mod:`bridge.recognizers.dedup`), on its own."""

from __future__ import annotations

from bridge.events import Word
from bridge.recognizers.base import Transcript
from bridge.recognizers.dedup import rebase


def _final(start: float, end: float, *words: str, is_final: bool = True) -> Transcript:
    step = (end - start) / len(words)
    timed = tuple(Word(word=w, start=start + i * step, end=start + (i + 1) * step, punctuated_word=w)
                  for i, w in enumerate(words))  # fmt: skip
    return Transcript(is_final=is_final, start=start, end=end, text=" ".join(words), words=timed)


def test_a_final_inside_what_is_covered_is_dropped_whatever_its_words() -> None:
    assert rebase(_final(0.0, 1.0, "other", "words"), conn_base=2.0, covered=3.0, origin=10.0) is None
    assert rebase(_final(0.0, 1.0005, "x"), conn_base=2.0, covered=3.0, origin=10.0) is None  # rounding slack


def test_a_final_overlapping_what_is_covered_keeps_only_its_new_words_on_the_call_clock() -> None:
    out = rebase(_final(0.0, 2.0, "yes", "I", "said", "no"), conn_base=2.0, covered=3.0, origin=10.0)
    assert out is not None
    assert (out.start, out.end, out.text) == (13.0, 14.0, "said no")
    assert [(w.word, w.start, w.end) for w in out.words] == [("said", 13.0, 13.5), ("no", 13.5, 14.0)]


def test_a_partial_is_kept_only_while_it_reaches_past_what_is_covered() -> None:
    assert rebase(_final(0.0, 1.0, "old", is_final=False), conn_base=0.0, covered=1.0, origin=0.0) is None
    out = rebase(_final(0.5, 1.5, "new", is_final=False), conn_base=0.0, covered=1.0, origin=5.0)
    assert out is not None and (out.start, out.end, out.words) == (5.5, 6.5, ())
