"""Live events: the JSON contract between the bridge, Redis pub/sub and every subscriber.

One tagged union, discriminated by ``type``. Times are seconds from the start of the call (the
call's own clock, not any recognizer's). Finals carry a stable ``id`` derived from
``(track, audio start)`` and a durable ``seq`` (their 1-based position in the call's final log),
which a reconnecting subscriber passes back as ``?after=<seq>`` to resume with no gap and no
duplicate. ``call_started``/``call_ended`` carry the number of finals stored so far; partials and the
other ephemeral events carry none (``seq`` 0, omitted on the wire): they are never resumed.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Track = Literal["inbound", "outbound"]
RecognizerState = Literal["connecting", "connected", "reconnecting", "failed", "closed"]

#: inbound = the caller (what Twilio receives from the party); outbound = the agent/callee.
SPEAKER: dict[str, str] = {"inbound": "Caller", "outbound": "Agent"}


def final_id(track: str, start: float) -> str:
    """Stable id of a final: the same audio span always maps to the same id (millisecond grain)."""
    return f"{track}-{round(start * 1000):010d}"


class Word(msgspec.Struct, array_like=False, omit_defaults=True):
    word: str
    start: float
    end: float
    confidence: float = 0.0
    punctuated_word: str | None = None


class _Event(msgspec.Struct, tag_field="type", kw_only=True, omit_defaults=True):
    call_sid: str
    seq: int = 0


class Partial(_Event, tag="partial"):
    track: Track
    start: float
    end: float
    text: str


class Final(_Event, tag="final"):
    id: str
    track: Track
    start: float
    end: float
    text: str
    confidence: float = 0.0
    words: list[Word] = msgspec.field(default_factory=list)
    #: True when this final closes an utterance (recognizer endpoint).
    speech_final: bool = False


class UtteranceEnd(_Event, tag="utterance_end"):
    track: Track
    end: float


class CallStarted(_Event, tag="call_started"):
    tracks: list[Track] = msgspec.field(default_factory=list)
    stream_sid: str = ""
    started_at: float = 0.0
    from_number: str = ""
    to_number: str = ""


class CallEnded(_Event, tag="call_ended"):
    ended_at: float = 0.0
    duration: float = 0.0
    reason: str = ""


class RecognizerStatus(_Event, tag="recognizer_status"):
    track: Track
    state: RecognizerState
    detail: str = ""
    #: The recognizer this status is about (``deepgram``, ``elevenlabs``, ``embedded``…).
    recognizer: str = ""
    #: True once the track runs on the fallback recognizer (for the rest of that stream).
    fallback: bool = False


GapReason = Literal["catchup", "buffer", "failed", "closing"]


class ServedSpan(msgspec.Struct, omit_defaults=True):
    """Which recognizer transcribed ``[start, end)`` of a track live (call seconds; ``end`` is
    ``None`` while it still serves)."""

    recognizer: str
    start: float
    end: float | None = None
    fallback: bool = False


class LiveGap(msgspec.Struct):
    """Audio of a track that was not transcribed live (the batch pass still has it), and why:
    ``catchup`` older than the replay's catch-up budget, ``buffer`` past the replay buffer,
    ``failed`` the recognizer failed for good, ``closing`` the call ended while disconnected."""

    start: float
    end: float
    reason: GapReason


class Alert(_Event, tag="alert"):
    """A live alert rule matched a final (compliance rules, ``BRIDGE_COMPLIANCE_RULES``)."""

    rule: str
    track: Track
    #: The (redacted) text of the final that matched, and where it is in the call (seconds).
    text: str
    start: float
    end: float
    #: Id of the final that matched (one alert per rule and final).
    final_id: str = ""


LiveEvent = Partial | Final | UtteranceEnd | CallStarted | CallEnded | RecognizerStatus | Alert

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[LiveEvent] = msgspec.json.Decoder(LiveEvent)
_final_decoder = msgspec.json.Decoder(Final)


def encode(event: LiveEvent) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes | str) -> LiveEvent:
    """Parse one live event; raises ``msgspec.ValidationError``/``DecodeError`` on bad input."""
    return _decoder.decode(data)


def decode_final(data: bytes | str) -> Final:
    return _final_decoder.decode(data)


__all__ = [
    "SPEAKER",
    "Alert",
    "CallEnded",
    "CallStarted",
    "Final",
    "GapReason",
    "LiveEvent",
    "LiveGap",
    "Partial",
    "RecognizerState",
    "RecognizerStatus",
    "ServedSpan",
    "Track",
    "UtteranceEnd",
    "Word",
    "decode",
    "decode_final",
    "encode",
    "final_id",
]
