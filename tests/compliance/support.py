"""The fixture calls of ``fixtures/compliance/calls.toml`` as batch transcripts."""

from __future__ import annotations

import tomllib
from typing import Any

from bridge.events import SPEAKER, Word, final_id
from bridge.transcripts import BatchTranscript, Utterance
from tests.support import FIXTURES

CASES: dict[str, dict[str, Any]] = tomllib.loads((FIXTURES / "compliance" / "calls.toml").read_text())


def utterance(track: str, start: float, end: float, text: str) -> Utterance:
    """A turn whose words are spread evenly over its time (as a recognizer's word times would be)."""
    raw = text.split()
    step = (end - start) / max(1, len(raw))
    words = [Word(word=w.strip(".,!?").lower(), punctuated_word=w, start=round(start + i * step, 3),
                  end=round(start + (i + 1) * step, 3)) for i, w in enumerate(raw)]  # fmt: skip
    return Utterance(id=final_id(track, start), track=track, channel=0 if track == "inbound" else 1,
                     speaker=SPEAKER[track], start=start, end=end, text=text, words=words)  # fmt: skip


def transcript(call_sid: str, turns: list[list[Any]]) -> BatchTranscript:
    utterances = [utterance(str(t), float(s), float(e), str(x)) for t, s, e, x in turns]
    duration = max((u.end for u in utterances), default=0.0)
    return BatchTranscript(call_sid=call_sid, engine="fixture", model="text", duration=duration, channels=2,
                           tracks=["inbound", "outbound"], utterances=utterances, job_key="fixture")  # fmt: skip


def case(name: str, call_sid: str = "CA" + "c0" * 16) -> BatchTranscript:
    return transcript(call_sid, CASES[name]["turns"])
