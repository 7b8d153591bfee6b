"""Word error rate with one normalisation, shared by the compliance pass and the benchmarks.

Two transcripts of the same speech differ in casing, punctuation and how numbers are written
("20" vs "twenty", "45729" vs "four five seven two nine"); none of that is a recognition error.
So both sides are lowercased, stripped of punctuation, and every number is spelled out in words:
a plain cardinal ("20" -> "twenty"), digit by digit for identifiers (leading zero or five digits
and more, e.g. order and phone numbers), ordinals ("3rd" -> "third"), decimals ("2.5" -> "two point
five"), "%" -> "percent" and a leading "$" -> a trailing "dollars".
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINAL_IRREGULAR = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip

_TOKEN = re.compile(r"\$?\d[\d,]*(?:\.\d+)?(?:st|nd|rd|th|%)?|[a-z]+(?:'[a-z]+)*|%")
_THOUSANDS = re.compile(r"^\d{1,3}(?:,\d{3})+$")


def _cardinal(n: int) -> list[str]:
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        tens, ones = divmod(n, 10)
        return [_TENS[tens]] + ([_ONES[ones]] if ones else [])
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return [_ONES[hundreds], "hundred"] + (_cardinal(rest) if rest else [])
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return _cardinal(high) + [name] + (_cardinal(rest) if rest else [])
    return [str(n)]  # pragma: no cover - unreachable


def _ordinal(words: list[str]) -> list[str]:
    last = words[-1]
    if last in _ORDINAL_IRREGULAR:
        last = _ORDINAL_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return [*words[:-1], last]


def _digits(s: str) -> list[str]:
    return [_ONES[int(c)] for c in s]


def _integer(s: str) -> list[str]:
    """Digits as spoken: identifiers digit by digit, quantities as cardinals."""
    if len(s) > 1 and (s.startswith("0") or len(s) >= 5):
        return _digits(s)
    return _cardinal(int(s))


def _number(token: str) -> list[str]:
    dollars = token.startswith("$")
    token = token.lstrip("$")
    suffix: list[str] = []
    if token.endswith("%"):
        token, suffix = token[:-1], ["percent"]
    ordinal = token[-2:] in ("st", "nd", "rd", "th")
    if ordinal:
        token = token[:-2]
    if _THOUSANDS.match(token.split(".")[0]):
        token = token.replace(",", "")
    words: list[str] = []
    for part in filter(None, token.split(",")):  # a comma that is not a thousands separator: a list
        whole, _, frac = part.partition(".")
        words += _integer(whole)
        if frac:
            words += ["point", *_digits(frac)]
    if ordinal and words:
        words = _ordinal(words)
    return words + suffix + (["dollars"] if dollars else [])


def normalize(text: str) -> list[str]:
    """The words of ``text`` in the one canonical form both sides of a comparison are put in."""
    text = text.lower().replace("\u2019", "'").replace("-", " ")
    out: list[str] = []
    for token in _TOKEN.findall(text):
        if token == "%":
            out.append("percent")
        elif token[0].isdigit() or token[0] == "$":
            out.extend(_number(token))
        else:
            out.append(token)
    return out


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


def align(ref: list[str], hyp: list[str]) -> WerResult:
    """Levenshtein alignment of two word lists, counting each kind of edit."""
    # Each cell: (total, subs, dels, ins); ties prefer substitutions (the usual convention).
    prev = [(j, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        cur = [(i, 0, i, 0)]
        r = ref[i - 1]
        for j in range(1, len(hyp) + 1):
            diag = prev[j - 1]
            if r == hyp[j - 1]:
                best = diag
            else:
                best = (diag[0] + 1, diag[1] + 1, diag[2], diag[3])
            up = prev[j]
            if up[0] + 1 < best[0]:
                best = (up[0] + 1, up[1], up[2] + 1, up[3])
            left = cur[j - 1]
            if left[0] + 1 < best[0]:
                best = (left[0] + 1, left[1], left[2], left[3] + 1)
            cur.append(best)
        prev = cur
    _, subs, dels, ins = prev[-1]
    return WerResult(len(ref), len(hyp), subs, dels, ins)


def wer(reference: str, hypothesis: str) -> WerResult:
    """Word errors of ``hypothesis`` against ``reference`` after :func:`normalize`."""
    return align(normalize(reference), normalize(hypothesis))


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> WerResult:
    """Pooled errors over many (reference, hypothesis) pairs: total errors / total reference words."""
    total = WerResult(0, 0, 0, 0, 0)
    for ref, hyp in pairs:
        total = total + wer(ref, hyp)
    return total


__all__ = ["WerResult", "align", "corpus_wer", "normalize", "wer"]
