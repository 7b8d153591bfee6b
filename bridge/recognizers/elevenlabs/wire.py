"""ElevenLabs Scribe v2 Realtime wire messages
(https://elevenlabs.io/docs/api-reference/speech-to-text/v-1-speech-to-text-realtime).

Messages are tagged by ``message_type`` (not ``type``) and carry the transcript in ``text``. Every
error shares one shape, ``{"message_type": <type>, "error": <details>}``; error type names changed
between API versions (``quota_exceeded_error`` became ``quota_exceeded``), so both are recognised.
"""

from __future__ import annotations

import msgspec


class InputAudioChunk(msgspec.Struct, tag_field="message_type", tag="input_audio_chunk", omit_defaults=True):
    audio_base_64: str
    commit: bool
    sample_rate: int
    previous_text: str | None = None


class SessionStarted(msgspec.Struct, tag_field="message_type", tag="session_started"):
    session_id: str = ""
    config: dict[str, object] = msgspec.field(default_factory=dict)


class PartialTranscript(msgspec.Struct, tag_field="message_type", tag="partial_transcript"):
    text: str = ""


class CommittedTranscript(msgspec.Struct, tag_field="message_type", tag="committed_transcript"):
    text: str = ""


class ELWord(msgspec.Struct):
    text: str
    start: float | None = None
    end: float | None = None
    type: str = "word"
    speaker_id: str | None = None
    logprob: float | None = None


class CommittedTranscriptWithTimestamps(
    msgspec.Struct, tag_field="message_type", tag="committed_transcript_with_timestamps"
):
    text: str = ""
    language_code: str = ""
    words: list[ELWord] = msgspec.field(default_factory=list)


class WarningMessage(msgspec.Struct, tag_field="message_type", tag="warning"):
    warning: str = ""


class ErrorMessage(msgspec.Struct):
    """Every error type shares this shape: ``{"message_type": <type>, "error": <details>}``."""

    message_type: str
    error: str = ""


ServerMessage = (
    SessionStarted | PartialTranscript | CommittedTranscript | CommittedTranscriptWithTimestamps | WarningMessage
)

#: Errors a reconnect cannot fix (credentials, terms, quota, our parameters). Old and new names.
REJECTING_ERRORS = frozenset(
    {
        "auth_error",
        "unaccepted_terms",
        "unaccepted_terms_error",
        "quota_exceeded",
        "quota_exceeded_error",
        "invalid_request",
    }
)
#: Errors that are our own pacing problems: logged, the session goes on.
SOFT_ERRORS = frozenset({"commit_throttled", "chunk_size_exceeded"})


class _Head(msgspec.Struct):
    message_type: str = ""
    error: str | None = None


_encoder = msgspec.json.Encoder()
_head_decoder = msgspec.json.Decoder(_Head)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_error_decoder = msgspec.json.Decoder(ErrorMessage)


def decode_server(data: str | bytes) -> ServerMessage | ErrorMessage | None:
    """Parse a server message; ``None`` for a well-formed message of a type we do not use.

    Raises ``msgspec.DecodeError``/``ValidationError`` on garbage.
    """
    head = _head_decoder.decode(data)
    if head.error is not None or head.message_type.endswith("error") or head.message_type in REJECTING_ERRORS:
        return _error_decoder.decode(data)
    if head.message_type in _KNOWN:
        message: ServerMessage = _server_decoder.decode(data)
        return message
    return None


_KNOWN = frozenset(
    {
        "session_started",
        "partial_transcript",
        "committed_transcript",
        "committed_transcript_with_timestamps",
        "warning",
    }
)


def encode(message: InputAudioChunk) -> bytes:
    return _encoder.encode(message)



__all__ = [
    "REJECTING_ERRORS",
    "SOFT_ERRORS",
    "CommittedTranscript",
    "CommittedTranscriptWithTimestamps",
    "ELWord",
    "ErrorMessage",
    "InputAudioChunk",
    "PartialTranscript",
    "ServerMessage",
    "SessionStarted",
    "WarningMessage",
    "decode_server",
    "encode",
]
