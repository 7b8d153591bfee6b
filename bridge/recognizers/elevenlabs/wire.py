"""ElevenLabs Scribe v2 Realtime wire messages
(https://elevenlabs.io/docs/api-reference/speech-to-text/v-1-speech-to-text-realtime).

Shapes follow the official Python SDK (``elevenlabs`` 2.78.0): the server's messages are the union
``ReceiveTranscription`` (``elevenlabs/v_1_speech_to_text_realtime/types/receive_transcription.py``),
the client's audio is ``InputAudioChunkPayload``. Messages are tagged by ``message_type`` (not
``type``); every error shares one shape, ``{"message_type": <type>, "error": <details>}``
(``Scribe*ErrorPayload``). Our own server-side test double (:mod:`bridge.testing.elevenlabs`)
encodes these same structs, so the fake speaks exactly what the client parses.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class InputAudioChunk(msgspec.Struct, tag_field="message_type", tag="input_audio_chunk", omit_defaults=True):
    """``InputAudioChunkPayload``; ``previous_text`` is only allowed on a session's first chunk."""

    audio_base_64: str
    commit: bool
    sample_rate: int
    previous_text: str | None = None


class SessionConfig(msgspec.Struct, omit_defaults=True):
    """``SessionStartedPayloadConfig`` (the fields we read or the fake echoes)."""

    sample_rate: int | None = None
    audio_format: str | None = None
    language_code: str | None = None
    commit_strategy: str | None = None
    vad_silence_threshold_secs: float | None = None
    model_id: str | None = None
    include_timestamps: bool | None = None
    keyterms: list[str] | None = None


class SessionStarted(msgspec.Struct, tag_field="message_type", tag="session_started"):
    session_id: str = ""
    config: SessionConfig = msgspec.field(default_factory=SessionConfig)


class PartialTranscript(msgspec.Struct, tag_field="message_type", tag="partial_transcript"):
    text: str = ""


class CommittedTranscript(msgspec.Struct, tag_field="message_type", tag="committed_transcript"):
    text: str = ""


class ELWord(msgspec.Struct, omit_defaults=True):
    """``TranscriptionWord``: ``type`` is ``word`` or ``spacing``; ``characters`` are plain strings
    in the realtime API (unlike the batch API's ``{text, start, end}``), and we do not read them."""

    text: str
    start: float | None = None
    end: float | None = None
    type: str = "word"
    speaker_id: str | None = None
    logprob: float | None = None
    characters: list[str] | None = None


class CommittedTranscriptWithTimestamps(
    msgspec.Struct, tag_field="message_type", tag="committed_transcript_with_timestamps"
):
    text: str = ""
    language_code: str | None = None
    words: list[ELWord] = msgspec.field(default_factory=list)


class WarningMessage(msgspec.Struct, tag_field="message_type", tag="warning"):
    """``ScribeWarning``."""

    warning: str = ""


ErrorType = Literal[
    "error",
    "auth_error",
    "quota_exceeded",
    "commit_throttled",
    "unaccepted_terms",
    "rate_limited",
    "queue_overflow",
    "resource_exhausted",
    "session_time_limit_exceeded",
    "input_error",
    "invalid_request",
    "chunk_size_exceeded",
    "insufficient_audio_activity",
    "transcriber_error",
]


class ErrorMessage(msgspec.Struct):
    """Every ``Scribe*ErrorPayload``: ``{"message_type": <type>, "error": <details>}``."""

    message_type: ErrorType
    error: str = ""


ServerMessage = (
    SessionStarted | PartialTranscript | CommittedTranscript | CommittedTranscriptWithTimestamps | WarningMessage
)

#: Errors a reconnect cannot fix (credentials, terms, quota, our parameters).
REJECTING_ERRORS: frozenset[str] = frozenset({"auth_error", "unaccepted_terms", "quota_exceeded", "invalid_request"})
#: "Unsupported audio format or invalid input": the same audio would fail again.
INPUT_ERRORS: frozenset[str] = frozenset({"input_error"})
#: Too many sessions or requests: retried later, or handed to the fallback at once.
THROTTLING_ERRORS: frozenset[str] = frozenset({"rate_limited"})
#: Errors that are our own pacing problems: logged, the session goes on.
SOFT_ERRORS: frozenset[str] = frozenset({"commit_throttled", "chunk_size_exceeded"})
#: In the SDK's union, not used by the bridge (diarization, entities, redaction, edits): ignored.
UNUSED: frozenset[str] = frozenset(
    {"diarized_transcript", "speakers_merged", "committed_transcript_entities", "redacted_transcript",
     "edited_transcript"}
)  # fmt: skip
ERROR_TYPES: frozenset[str] = frozenset(ErrorType.__args__)  # type: ignore[attr-defined]


class _Head(msgspec.Struct):
    message_type: str = ""
    error: str | None = None


_encoder = msgspec.json.Encoder()
_head_decoder = msgspec.json.Decoder(_Head)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_error_decoder = msgspec.json.Decoder(ErrorMessage)

_KNOWN = frozenset(
    {
        "session_started",
        "partial_transcript",
        "committed_transcript",
        "committed_transcript_with_timestamps",
        "warning",
    }
)


def decode_server(data: str | bytes) -> ServerMessage | ErrorMessage | None:
    """Parse a server message; ``None`` for a well-formed message of a type we do not use.

    A message of a type the SDK does not know but that carries ``error`` is read as a generic
    ``error`` (retryable), so a new error type never passes silently. Raises
    ``msgspec.DecodeError``/``ValidationError`` on garbage.
    """
    head = _head_decoder.decode(data)
    if head.message_type in ERROR_TYPES:
        return _error_decoder.decode(data)
    if head.message_type in _KNOWN:
        message: ServerMessage = _server_decoder.decode(data)
        return message
    if head.error is not None and head.message_type not in UNUSED:
        return ErrorMessage(message_type="error", error=f"{head.message_type}: {head.error}")
    return None


def encode(message: InputAudioChunk | ServerMessage | ErrorMessage) -> bytes:
    return _encoder.encode(message)


_client_decoder = msgspec.json.Decoder(InputAudioChunk)


def decode_client(data: str | bytes) -> InputAudioChunk:
    """Parse a client chunk (the test double's side); raises ``msgspec`` errors on garbage."""
    return _client_decoder.decode(data)


__all__ = [
    "ERROR_TYPES",
    "INPUT_ERRORS",
    "REJECTING_ERRORS",
    "SOFT_ERRORS",
    "THROTTLING_ERRORS",
    "UNUSED",
    "CommittedTranscript",
    "CommittedTranscriptWithTimestamps",
    "ELWord",
    "ErrorMessage",
    "ErrorType",
    "InputAudioChunk",
    "PartialTranscript",
    "ServerMessage",
    "SessionConfig",
    "SessionStarted",
    "WarningMessage",
    "decode_client",
    "decode_server",
    "encode",
]
