"""Documents of the batch path: the compliance transcript and the live-vs-batch quality figures.

What :mod:`bridge.events` is to the live path, this module is to the batch path: the shapes that
the batch engines produce, the store keeps (Redis values and ``.batch.json`` files), and the REST API
serves. Times are seconds from the start of the recording, which is the start of the call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import msgspec

from bridge.events import SPEAKER, Word, final_id

#: Track of each channel when a job does not say: caller first, agent second.
DEFAULT_TRACKS = ("inbound", "outbound")


class EngineError(RuntimeError):
    """A batch engine failed on a good recording (HTTP error, unparseable response, model failure)."""


class Utterance(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One speaker turn of the compliance transcript."""

    id: str
    track: str
    channel: int
    speaker: str
    start: float
    end: float
    text: str
    confidence: float = 0.0
    words: list[Word] = msgspec.field(default_factory=list)


class Redaction(msgspec.Struct, kw_only=True):
    """A span of one track whose words were masked (and whose audio is silenced in the recording).

    ``kind`` is the entity kind (``card_number``, ``card_expiry``, ``card_cvv``, ``ssn``, or
    ``card_answer`` for a caller's answer to a card request that was not recognised as digits).
    """

    track: str
    start: float
    end: float
    kind: str


class BatchTranscript(msgspec.Struct, kw_only=True):
    """The compliance transcript of one recording (Redis value and ``.batch.json`` file)."""

    call_sid: str
    engine: str
    model: str
    duration: float
    channels: int
    tracks: list[str]
    utterances: list[Utterance]
    #: Where the audio came from (local path) and which job identity produced it (idempotence).
    recording: str = ""
    job_key: str = ""
    created_at: float = 0.0
    processing_seconds: float = 0.0

    def text(self, track: str) -> str:
        return " ".join(u.text for u in self.utterances if u.track == track and u.text)


class TrackQuality(msgspec.Struct, kw_only=True):
    """Live vs batch on one track; the batch transcript is the reference."""

    track: str
    wer: float
    ref_words: int
    hyp_words: int
    substitutions: int
    deletions: int
    insertions: int


class CallQuality(msgspec.Struct, kw_only=True):
    """The call's live-vs-batch WER (``wer`` is ``None`` when there was no live transcript to judge)."""

    call_sid: str
    wer: float | None
    tracks: list[TrackQuality]
    flagged: bool
    threshold: float
    live_finals: int
    batch_engine: str = ""
    batch_model: str = ""
    computed_at: float = 0.0


class Recording(Protocol):
    """What a batch engine reads of a recording (:class:`bridge.audio.Wav` is one)."""

    @property
    def channels(self) -> int: ...

    @property
    def duration(self) -> float: ...

    @property
    def raw(self) -> bytes: ...

    def channel_16k(self, index: int) -> object: ...


class BatchEngine(Protocol):
    """Transcribes a whole recording, every channel, into speaker-labelled utterances."""

    name: str
    model: str

    async def transcribe(self, recording: Recording, tracks: list[str]) -> list[Utterance]: ...


_encoder = msgspec.json.Encoder()
_transcript_decoder = msgspec.json.Decoder(BatchTranscript)
_quality_decoder = msgspec.json.Decoder(CallQuality)


def encode(document: BatchTranscript | CallQuality) -> bytes:
    return _encoder.encode(document)


def decode_transcript(data: bytes | str) -> BatchTranscript:
    """Raises ``msgspec.DecodeError``/``ValidationError`` on a bad document."""
    return _transcript_decoder.decode(data)


def decode_quality(data: bytes | str) -> CallQuality:
    return _quality_decoder.decode(data)


def tracks_for(channels: int, tracks: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Track of each channel: the job's list when it fits, else caller first, agent second."""
    if len(tracks) >= channels:
        return list(tracks[:channels])
    return list(DEFAULT_TRACKS[:channels])


def utterance(track: str, channel: int, words: list[Word], text: str, confidence: float) -> Utterance:
    """An utterance spanning ``words`` (its id is the live final id of the same span)."""
    start = words[0].start if words else 0.0
    end = words[-1].end if words else start
    return Utterance(
        id=final_id(track, start),
        track=track,
        channel=channel,
        speaker=SPEAKER.get(track, track),
        start=round(start, 3),
        end=round(end, 3),
        text=text.strip(),
        confidence=round(confidence, 4),
        words=words,
    )


def plain(word: str) -> str:
    """A word without case and surrounding punctuation (``Card,`` -> ``card``)."""
    return "".join(c for c in word.lower() if c.isalnum() or c in "'%$-.").strip(".-'")


def in_order(utterances: list[Utterance]) -> list[Utterance]:
    return sorted(utterances, key=lambda u: (u.start, u.channel, u.end))


def json_path(recording_path: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None) -> Path:
    """``call.wav`` -> ``call.batch.json`` beside it (or in ``out_dir``)."""
    target = Path(recording_path).with_suffix(".batch.json")
    return Path(out_dir) / target.name if out_dir is not None else target


def write_json(transcript: BatchTranscript, path: Path) -> None:
    """Write atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(msgspec.json.format(_encoder.encode(transcript), indent=1))
    os.replace(tmp, path)


__all__ = [
    "DEFAULT_TRACKS",
    "BatchEngine",
    "BatchTranscript",
    "CallQuality",
    "EngineError",
    "Recording",
    "Redaction",
    "TrackQuality",
    "Utterance",
    "decode_quality",
    "decode_transcript",
    "encode",
    "in_order",
    "json_path",
    "plain",
    "tracks_for",
    "utterance",
    "write_json",
]
