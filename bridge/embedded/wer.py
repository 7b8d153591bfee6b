"""Word error rate with one normalisation for references and hypotheses alike.

Lowercase, punctuation dropped, numbers spelled out digit by digit or as words, so "4 5 7" and
"four five seven" compare equal.
"""

from __future__ import annotations

import re

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
    "sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_TOKEN = re.compile(r"[a-z0-9']+")


def _number(n: int) -> list[str]:
    if n < 20:
        return [_ONES[n]]
    if n < 100:
        return [_TENS[n // 10]] + ([_ONES[n % 10]] if n % 10 else [])
    if n < 1000:
        rest = _number(n % 100) if n % 100 else []
        return [_ONES[n // 100], "hundred", *rest]
    if n < 10000 and n % 1000 == 0:
        return [_ONES[n // 1000], "thousand"]
    return [_ONES[int(d)] for d in str(n)]


def normalize(text: str) -> list[str]:
    out: list[str] = []
    for tok in _TOKEN.findall(text.lower().replace("-", " ")):
        tok = tok.strip("'")
        if not tok:
            continue
        if tok.isdigit():
            out.extend(_number(int(tok)) if len(tok) <= 4 else [_ONES[int(d)] for d in tok])
        else:
            out.append(tok)
    return out


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = normalize(reference), normalize(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
