"""Word error rate, one way for the whole project: the compliance pass, the quality signal, benchmarks.

Two transcripts of the same speech differ in casing, punctuation and how numbers are written ("20"
vs "twenty", "555 218 4409" vs "five five five, two one eight…"); none of that is a recognition
error. Both sides go through Whisper's English text normalizer (the ``whisper-normalizer`` package,
the normaliser Whisper's own evaluations use), then runs of digits are scored digit by digit (the
normaliser joins "five five five, two one eight" into one token while "5, 5, 5, 2 1 8" stays six,
so grouping alone would otherwise count as errors), and jiwer aligns the words and counts the edits.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import jiwer


@functools.cache
def _normalizer() -> Any:
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> list[str]:
    """The words of ``text`` in the one canonical form both sides of a comparison are put in."""
    words = str(_normalizer()(text.replace("\u2019", "'"))).split()
    return [piece for word in words for piece in (list(word) if word.isdigit() else [word])]


@dataclass(frozen=True)
class WerResult:
    """Edit counts of a hypothesis against a reference (both already normalised)."""

    ref_words: int
    hyp_words: int
    substitutions: int
    deletions: int
    insertions: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference word; an empty reference scores 0 when the hypothesis is empty too, else 1."""
        if self.ref_words == 0:
            return 0.0 if self.hyp_words == 0 else 1.0
        return self.errors / self.ref_words

    def __add__(self, other: WerResult) -> WerResult:
        return WerResult(
            self.ref_words + other.ref_words,
            self.hyp_words + other.hyp_words,
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
        )


ZERO = WerResult(0, 0, 0, 0, 0)


def align(ref: list[str], hyp: list[str]) -> WerResult:
    """Levenshtein alignment of two word lists (jiwer), counting each kind of edit."""
    if not ref:
        return WerResult(0, len(hyp), 0, 0, len(hyp))
    if not hyp:
        return WerResult(len(ref), 0, 0, len(ref), 0)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return WerResult(len(ref), len(hyp), out.substitutions, out.deletions, out.insertions)


def wer(reference: str, hypothesis: str) -> WerResult:
    """Word errors of ``hypothesis`` against ``reference`` after :func:`normalize`."""
    return align(normalize(reference), normalize(hypothesis))


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> WerResult:
    """Pooled errors over many (reference, hypothesis) pairs: total errors / total reference words."""
    total = ZERO
    for ref, hyp in pairs:
        total = total + wer(ref, hyp)
    return total


__all__ = ["ZERO", "WerResult", "align", "corpus_wer", "normalize", "wer"]
