"""The benchmark's fixture calls, grouped in sets, with their references.

``fixtures/sets/<set>/<call>.wav`` (8 kHz mu-law stereo: caller, agent) and ``<call>.json``: either
``turns`` (track, start, end, text; made by ``fixtures/make_audio.py sets``) or ``references`` (the
text per track, for calls whose turn times are not known). ``fixtures/calls/`` and the demo call
form the set ``basic``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from bridge.audio import SAMPLE_RATE, mulaw_to_float, read_wav
from bridge.data import call_path

TRACKS = ("inbound", "outbound")
FRAME = SAMPLE_RATE // 50


@dataclasses.dataclass(frozen=True)
class Turn:
    track: str
    start: float
    end: float
    text: str


@dataclasses.dataclass(frozen=True)
class FixtureCall:
    set: str
    name: str
    wav: Path
    duration: float
    #: Reference text per track.
    references: dict[str, str]
    #: Turns with their times (empty when only the text per track is known).
    turns: tuple[Turn, ...] = ()

    def audio(self) -> dict[str, bytes]:
        """Each track's mu-law bytes, as Twilio would stream them."""
        wav = read_wav(self.wav)
        return {track: wav.channel_bytes(i) for i, track in enumerate(TRACKS[: wav.channels])}

    def spoken_turns(self, track: str, audio: bytes) -> list[Turn]:
        """The track's turns narrowed to where speech is heard (:func:`speech_span`)."""
        samples = mulaw_to_float(audio)  # once per track, not once per turn
        return [_speech_span(t, samples) for t in self.turns if t.track == track]


#: A 20 ms frame is speech once its RMS is within 30 dB of the turn's loudest frame.
SPEECH_FLOOR_DB = -30.0


def speech_span(turn: Turn, audio: bytes) -> Turn:
    """``turn`` from its first to its last audible 20 ms frame.

    The first fixtures' turn times are those of the TTS files, which hold 0.2-0.35 s of breath and
    silence before the first word; latency measured from there would credit the recognizer with
    time nobody was speaking (and final lag would be measured from a late end).
    """
    return _speech_span(turn, mulaw_to_float(audio))


def _speech_span(turn: Turn, pcm: np.ndarray) -> Turn:
    a, b = int(turn.start * SAMPLE_RATE), min(int(turn.end * SAMPLE_RATE), pcm.size)
    frames = (b - a) // FRAME
    if frames <= 0:
        return turn
    rms = np.sqrt((pcm[a : a + frames * FRAME].reshape(frames, FRAME) ** 2).mean(axis=1))
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (SPEECH_FLOOR_DB / 20))
    if loud.size == 0:
        return turn
    start = turn.start + loud[0] * FRAME / SAMPLE_RATE
    end = turn.start + (loud[-1] + 1) * FRAME / SAMPLE_RATE
    return dataclasses.replace(turn, start=start, end=min(end, turn.end))


def load_call(json_path: Path, set_name: str) -> FixtureCall:
    doc = json.loads(json_path.read_text())
    turns = tuple(Turn(t["track"], float(t["start"]), float(t["end"]), t["text"]) for t in doc.get("turns", []))
    refs: dict[str, str] = dict(doc.get("references", {}))
    for t in turns:
        refs[t.track] = (refs.get(t.track, "") + " " + t.text).strip()
    return FixtureCall(set_name, json_path.stem, json_path.with_suffix(".wav"), float(doc["duration"]), refs, turns)


def load_sets(fixtures: str | Path, names: list[str] | None = None) -> dict[str, list[FixtureCall]]:
    """The sets asked for (all when ``names`` is empty), each a list of calls in name order."""
    root = Path(fixtures)
    sets: dict[str, list[FixtureCall]] = {}
    basic = [load_call(p, "basic") for p in sorted((root / "calls").glob("*.json"))]
    demo = call_path("support_call", ".json")
    if demo.exists():
        basic.append(load_call(demo, "basic"))
    if basic:
        sets["basic"] = basic
    for folder in sorted(p for p in (root / "sets").glob("*") if p.is_dir() and p.name != "sources"):
        calls = [load_call(p, folder.name) for p in sorted(folder.glob("*.json"))]
        if calls:
            sets[folder.name] = calls
    if names:
        unknown = [n for n in names if n not in sets]
        if unknown:
            raise ValueError(f"unknown fixture set(s) {', '.join(unknown)}; have {', '.join(sets)}")
        sets = {n: sets[n] for n in names}
    return sets


__all__ = ["TRACKS", "FixtureCall", "Turn", "load_call", "load_sets", "speech_span"]
