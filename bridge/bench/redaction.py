"""``bridge bench redaction``: is card data found, and is it silenced? (a correctness figure, not a speed).

* Text: the cases of ``fixtures/redaction/texts.toml`` (a call's finals; ``<...>`` marks the words
  that are card data) go through :class:`~bridge.redact.live.LiveRedactor` as a call's finals do; each
  word is scored: precision and recall of the masked words against the marked ones.
* Audio: each fixture call with ``sensitive`` turns (``fixtures/calls/card_call*.json``) is
  transcribed by the batch engine and redacted as the worker does; reported: the share of the
  caller's speech in the sensitive turns that is silent afterwards, the share of the caller's other
  speech left as it was, and whether the agent's channel is byte-identical.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import tomllib
from pathlib import Path

import numpy as np

from bridge import events
from bridge.audio import MULAW_SILENCE, mulaw_to_float, parse_wav, read_wav
from bridge.redact.audio import silence_spans
from bridge.redact.batch import redact_transcript
from bridge.redact.live import LiveRedactor
from bridge.transcripts import BatchEngine

DEFAULT_TEXTS = Path("fixtures") / "redaction" / "texts.toml"
ALL_KINDS = frozenset({"card", "ssn"})


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    #: (track, words, which words are card data) per final.
    turns: tuple[tuple[str, tuple[str, ...], tuple[bool, ...]], ...]


@dataclasses.dataclass
class Score:
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    #: Cases with a missed or a wrongly masked word.
    failed: list[str] = dataclasses.field(default_factory=list)

    @property
    def precision(self) -> float:
        masked = self.true_positives + self.false_positives
        return self.true_positives / masked if masked else 1.0

    @property
    def recall(self) -> float:
        sensitive = self.true_positives + self.false_negatives
        return self.true_positives / sensitive if sensitive else 1.0


def _marked(text: str) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    words: list[str] = []
    marks: list[bool] = []
    inside = False
    for raw in text.split():
        opens, closes = "<" in raw, ">" in raw
        inside = inside or opens
        words.append(raw.replace("<", "").replace(">", ""))
        marks.append(inside)
        inside = inside and not closes
    return tuple(words), tuple(marks)


def load_cases(path: Path = DEFAULT_TEXTS) -> list[Case]:
    spec = tomllib.loads(path.read_text())
    return [Case(c["name"], tuple((t[0], *_marked(t[1])) for t in c["turns"])) for c in spec["case"]]


def masked_words(case: Case, kinds: frozenset[str] = ALL_KINDS) -> list[bool]:
    """Which words of the case the redactor masks (each word one second of call time)."""
    redactor = LiveRedactor(kinds, lambda _f: None, hold_seconds=None)
    at = 0
    for i, (track, words, _) in enumerate(case.turns):
        ws = [events.Word(word=w, start=at + j, end=at + j + 0.5, punctuated_word=w) for j, w in enumerate(words)]
        redactor.final(events.Final(
            call_sid="CA" + "0" * 32, id=f"{track}-{i}", track="outbound" if track == "outbound" else "inbound",
            start=float(at), end=at + len(words) - 0.5, text=" ".join(words), words=ws,
        ))  # fmt: skip
        at += len(words) + 1
    redactor.flush()
    out = []
    at = 0
    for _, words, _ in case.turns:
        for j in range(len(words)):
            t = at + j + 0.25
            out.append(any(s.start <= t <= s.end for s in redactor.spans))
        at += len(words) + 1
    return out


def score(cases: list[Case], kinds: frozenset[str] = ALL_KINDS) -> Score:
    result = Score()
    for case in cases:
        expected = [m for _, _, marks in case.turns for m in marks]
        got = masked_words(case, kinds)
        tp = sum(e and g for e, g in zip(expected, got, strict=True))
        fp = sum(g and not e for e, g in zip(expected, got, strict=True))
        fn = sum(e and not g for e, g in zip(expected, got, strict=True))
        result.true_positives += tp
        result.false_positives += fp
        result.false_negatives += fn
        if fp or fn:
            result.failed.append(case.name)
    return result


@dataclasses.dataclass(frozen=True)
class AudioScore:
    call: str
    #: Share of the caller's speech in the sensitive turns that is silent after redaction.
    sensitive_silenced: float
    #: Share of the caller's speech elsewhere left untouched.
    other_kept: float
    agent_identical: bool


def _loud(channel: bytes) -> np.ndarray:
    return np.asarray(np.abs(mulaw_to_float(np.frombuffer(channel, dtype=np.uint8))) > 0.02)


async def score_call(wav: Path, engine: BatchEngine) -> AudioScore:
    from bridge.batch.engine import transcribe_recording

    ref = json.loads(wav.with_suffix(".json").read_text())
    recording = read_wav(wav)
    transcript = await transcribe_recording(
        engine, recording, call_sid="CA" + "0" * 32, tracks=["inbound", "outbound"], path=str(wav)
    )
    _, spans = redact_transcript(transcript, ALL_KINDS)
    raw, _ = silence_spans(recording.raw, spans, transcript.tracks)
    after = parse_wav(raw)
    caller = recording.channel_bytes(0)
    loud = _loud(caller)
    silent = np.frombuffer(after.channel_bytes(0), dtype=np.uint8) == MULAW_SILENCE
    kept = np.frombuffer(after.channel_bytes(0), dtype=np.uint8) == np.frombuffer(caller, dtype=np.uint8)
    sensitive = np.zeros(loud.size, dtype=bool)
    for turn in ref["turns"]:
        if turn["track"] == "inbound" and turn.get("sensitive"):
            sensitive[round(turn["start"] * 8000) : round(turn["end"] * 8000)] = True
    s, o = loud & sensitive, loud & ~sensitive
    return AudioScore(
        call=wav.stem,
        sensitive_silenced=float(silent[s].mean()) if s.any() else 1.0,
        other_kept=float(kept[o].mean()) if o.any() else 1.0,
        agent_identical=after.channel_bytes(1) == recording.channel_bytes(1),
    )


async def _audio(fixtures: Path, model: str) -> list[AudioScore]:
    from bridge.batch.engine import make_engine

    engine = await asyncio.to_thread(make_engine, "whisper", model=model)
    calls = sorted(p.with_suffix(".wav") for p in (fixtures / "calls").glob("card_call*.json"))
    return [await score_call(wav, engine) for wav in calls]


def main(args: argparse.Namespace) -> int:
    fixtures = Path(args.fixtures)
    result = score(load_cases(fixtures / "redaction" / "texts.toml"))
    print(f"text: {result.true_positives + result.false_negatives} card-data words, precision "
          f"{result.precision:.3f}, recall {result.recall:.3f} ({result.false_positives} false positives, "
          f"{result.false_negatives} missed)")  # fmt: skip
    if result.failed:
        print("  cases with errors: " + ", ".join(result.failed))
    if args.no_audio:
        return 0
    for a in asyncio.run(_audio(fixtures, args.model)):
        print(f"audio {a.call} (whisper {args.model}): caller's card speech silenced "
              f"{a.sensitive_silenced:.1%}, caller's other speech kept {a.other_kept:.1%}, "
              f"agent channel identical: {a.agent_identical}")  # fmt: skip
    return 0


__all__ = ["AudioScore", "Case", "Score", "load_cases", "main", "masked_words", "score", "score_call"]
