"""Results of a recognizer connection on the call clock, with what earlier finals covered cut away.

The resilience layer's de-duplication rule, by audio time and never by text: after a reconnect the
replayed audio is transcribed again, and a final whose span earlier finals already covered is the
same speech, whatever words it has this time. A final that only overlaps keeps its new words.
"""

from __future__ import annotations

import msgspec

from bridge.events import Word
from bridge.recognizers.base import Transcript

#: Finals ending within this much of the covered time count as already covered (rounding slack).
EPS = 1e-3


def rebase(event: Transcript, *, conn_base: float, covered: float, origin: float) -> Transcript | None:
    """``event`` (times from its connection's start, ``conn_base`` seconds into the track) on the call
    clock (``origin``: the call second of the track's first byte), less what finals up to ``covered``
    seconds of the track already hold; ``None`` when nothing in it is new."""
    start, end = conn_base + event.start, conn_base + event.end
    if not event.is_final:
        if event.text and end > covered + EPS:
            return msgspec.structs.replace(event, start=origin + start, end=origin + end, words=())
        return None
    if end <= covered + EPS:
        return None
    base = origin + conn_base
    words = tuple(
        Word(word=w.word, start=base + w.start, end=base + w.end, confidence=w.confidence,
             punctuated_word=w.punctuated_word)
        for w in event.words
        if conn_base + w.end > covered + EPS
    )  # fmt: skip
    text = event.text
    if start < covered - EPS:  # partly covered: keep only the new words
        if event.words:
            text = " ".join(w.punctuated_word or w.word for w in words)
        start = covered
    return msgspec.structs.replace(event, start=origin + start, end=origin + end, text=text, words=words)


__all__ = ["EPS", "rebase"]
