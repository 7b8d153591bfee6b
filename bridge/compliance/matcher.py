"""Phrase matching that survives recognition errors.

Both the transcript and the rules' phrases go through Whisper's English normaliser (case,
punctuation, spelling variants and number formats removed: "Risk-free!" -> ``risk free``), then a
phrase matches a run of words where each phrase word matches one recognised word:

- exactly, or with a similarity of at least the rule's threshold, for words of at least
  ``min_fuzzy_length`` letters: 100 x (1 - edits / length of the longer word), edits counted as
  Levenshtein distance (``monitered`` ~ ``monitored``: 89; ``layer`` ~ ``lawyer``: 83);
- ``word*`` is a stem: any word starting with it (``record*``: recorded, recording, ``recordid``),
  or whose start is similar enough;
- ``...`` stands for up to ``gap`` other words (``call* ... record*``: "this call may be recorded").

Matches never cross an utterance (one speaker's turn), so evidence is one turn with its times.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence

from rapidfuzz.distance import Levenshtein
from whisper_normalizer.english import EnglishTextNormalizer

from bridge.compliance.rules import Rule, RuleSet
from bridge.events import Word

_PHRASE_WORD = re.compile(r"[\w'$%]+\*?|\.\.\.")
GAP = "..."


@functools.cache
def _normaliser() -> EnglishTextNormalizer:
    return EnglishTextNormalizer()


def normalise(text: str) -> list[str]:
    """The words of ``text`` as the matcher sees them."""
    return str(_normaliser()(text)).split()


def similarity(a: str, b: str) -> float:
    """0-100: 100 x (1 - Levenshtein edits / length of the longer word)."""
    return 100.0 * float(Levenshtein.normalized_similarity(a, b))


@dataclasses.dataclass(frozen=True, slots=True)
class Token:
    """One normalised word of a transcript, with the times of the recognised word it came from."""

    text: str
    start: float
    end: float


def tokens(text: str, words: Sequence[Word], start: float, end: float) -> list[Token]:
    """A turn's normalised words: timed by word when the recognizer gave word times, else by the turn."""
    if not words:
        return [Token(t, start, end) for t in normalise(text)]
    out: list[Token] = []
    for w in words:
        out += [Token(t, w.start, w.end) for t in normalise(w.punctuated_word or w.word)]
    return out


@dataclasses.dataclass(frozen=True, slots=True)
class _Part:
    word: str
    stem: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Phrase:
    """A compiled phrase: normalised words, stems and gaps."""

    source: str
    parts: tuple[_Part, ...]


def compile_phrase(phrase: str) -> Phrase:
    parts: list[_Part] = []
    for raw in _PHRASE_WORD.findall(phrase.lower()):
        if raw == GAP:
            parts.append(_Part(GAP))
            continue
        stem = raw.endswith("*")
        words = normalise(raw.rstrip("*")) or [raw.rstrip("*")]
        parts += [_Part(w) for w in words[:-1]]
        parts.append(_Part(words[-1], stem))
    return Phrase(phrase, tuple(parts))


@dataclasses.dataclass(frozen=True, slots=True)
class Match:
    """Words ``[first, last]`` of a turn matched a phrase."""

    phrase: str
    first: int
    last: int


class RuleMatcher:
    """One rule's phrases, compiled once, matched against turns."""

    def __init__(self, rule: Rule, rules: RuleSet) -> None:
        self.rule = rule
        self.threshold = rules.threshold(rule)
        self.min_length = rules.min_fuzzy_length
        self.phrases = [compile_phrase(p) for p in rule.phrases]

    def _word(self, part: _Part, token: str) -> bool:
        pattern = part.word
        if part.stem:
            if token.startswith(pattern):
                return True
            if len(pattern) < self.min_length or self.threshold >= 100:
                return False
            n = len(pattern)
            return max(similarity(pattern, token[:k]) for k in (n - 1, n, n + 1)) >= self.threshold
        if token == pattern:
            return True
        return len(pattern) >= self.min_length and similarity(pattern, token) >= self.threshold

    def _at(self, parts: tuple[_Part, ...], p: int, words: Sequence[Token], i: int) -> int | None:
        """Index of the last word when ``parts[p:]`` matches from word ``i``, else ``None``."""
        part = parts[p]
        if part.word == GAP:
            for skip in range(self.rule.gap + 1):
                if i + skip >= len(words):
                    return None
                end = self._at(parts, p + 1, words, i + skip)
                if end is not None:
                    return end
            return None
        if i >= len(words) or not self._word(part, words[i].text):
            return None
        return i if p + 1 == len(parts) else self._at(parts, p + 1, words, i + 1)

    def matches(self, words: Sequence[Token]) -> list[Match]:
        """Every non-overlapping match in one turn, in order."""
        out: list[Match] = []
        i = 0
        while i < len(words):
            for phrase in self.phrases:
                end = self._at(phrase.parts, 0, words, i)
                if end is not None:
                    out.append(Match(phrase.source, i, end))
                    i = end
                    break
            i += 1
        return out

    def first(self, words: Sequence[Token]) -> Match | None:
        found = self.matches(words)
        return found[0] if found else None


def matchers(rules: RuleSet, rule_ids: Iterable[str] | None = None) -> list[RuleMatcher]:
    wanted = None if rule_ids is None else set(rule_ids)
    return [RuleMatcher(r, rules) for r in rules.rules if wanted is None or r.id in wanted]


__all__ = ["Match", "Phrase", "RuleMatcher", "Token", "compile_phrase", "matchers", "normalise", "similarity", "tokens"]
