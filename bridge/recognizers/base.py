"""The recognizer interface every streaming speech-to-text client implements.

A :class:`Recognizer` opens one :class:`RecognizerStream` per call track. The stream takes raw audio
bytes exactly as Twilio sent them (8 kHz mu-law: the bridge never transcodes) and yields typed
:data:`RecognizerEvent` values whose times are seconds from the start of *that connection*.
Rebasing onto the call's clock, keepalive, reconnect and replay are not the client's job: they live
in :mod:`bridge.recognizers.resilience`, which wraps any stream.

Exceptions::

    RecognizerError                 base class
    ├── RecognizerConnectError      could not connect or the connection dropped; retrying may help
    │   └── RecognizerThrottled     rate limited (HTTP 429, ElevenLabs ``rate_limited``): a retry may
    │                               help later, a configured fallback takes over at once
    ├── RecognizerRejected          the recognizer refused us (bad key, quota, parameters, 4xx on the
    │   │                           upgrade); retrying cannot help
    │   └── RecognizerInputError    it cannot decode the audio (Deepgram close 1008 ``DATA-0000``,
    │                               ElevenLabs ``input_error``); replaying the same bytes cannot help
    └── RecognizerProtocolError     the recognizer sent something we cannot understand
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

import msgspec

from bridge.events import Track, Word


class RecognizerError(Exception):
    """Base class of every recognizer failure."""

    retryable: bool = True

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class RecognizerConnectError(RecognizerError):
    """The connection could not be made or was lost; a reconnect may heal it."""

    retryable = True


class RecognizerRejected(RecognizerError):
    """The recognizer refused the request (auth, parameters); reconnecting would fail the same way."""

    retryable = False


class RecognizerThrottled(RecognizerConnectError):
    """Rate limited: retried with backoff, unless a fallback recognizer can take the track now."""


class RecognizerInputError(RecognizerRejected):
    """The recognizer cannot decode what it is sent; the same audio would fail the same way."""


class RecognizerProtocolError(RecognizerError):
    """The recognizer sent a message that does not parse."""

    retryable = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class StreamOptions:
    """What a recognizer stream is opened with. Mirrors the Deepgram live query parameters."""

    call_sid: str
    track: Track
    encoding: str = "mulaw"
    sample_rate: int = 8000
    language: str = "en"
    model: str = ""
    interim_results: bool = True
    #: Milliseconds of silence that end an utterance; ``None`` disables endpointing.
    endpointing_ms: int | None = 300
    utterance_end_ms: int | None = 1000
    vad_events: bool = True
    punctuate: bool = True
    smart_format: bool = False
    #: Words and phrases to bias recognition toward; each client sends them in its vendor's form.
    keyterms: tuple[str, ...] = ()
    #: Transcript text heard before this connection (context for ElevenLabs after a reconnect).
    previous_text: str = ""

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate * (1 if self.encoding in ("mulaw", "alaw") else 2)


class Transcript(msgspec.Struct, kw_only=True, frozen=True):
    """A partial (``is_final`` false) or final hypothesis for ``[start, end)`` of the connection."""

    is_final: bool
    start: float
    end: float
    text: str
    speech_final: bool = False
    from_finalize: bool = False
    confidence: float = 0.0
    words: tuple[Word, ...] = ()


class SpeechStarted(msgspec.Struct, kw_only=True, frozen=True):
    timestamp: float


class UtteranceEnded(msgspec.Struct, kw_only=True, frozen=True):
    last_word_end: float


RecognizerEvent = Transcript | SpeechStarted | UtteranceEnded


@runtime_checkable
class RecognizerStream(Protocol):
    """One live connection for one track.

    ``events()`` yields until the stream has ended; it ends normally after :meth:`close` has drained
    the last results, and raises a :class:`RecognizerError` when the connection fails.
    """

    async def send(self, audio: bytes) -> None:
        """Send raw audio (never empty)."""

    async def keepalive(self) -> None:
        """Tell the recognizer we are still here during silence."""

    async def finalize(self) -> None:
        """Ask for finals covering all audio sent so far."""

    async def commit(self) -> None:
        """Close the current segment now (a manual commit): the recognizer answers with its final at
        once and starts a new segment with the next audio. Deepgram ``Finalize`` (the embedded
        recognizer speaks the same), ElevenLabs ``commit``."""

    async def close(self, timeout: float = 5.0) -> None:
        """Ask for the last results, wait for them (bounded by ``timeout``), then close."""

    def events(self) -> AsyncIterator[RecognizerEvent]:
        """The typed events of this connection, in order."""
        ...


@runtime_checkable
class SendsNow(Protocol):
    """A stream that can also write audio from a synchronous caller (the media socket's read
    callback), sparing a task switch and a coroutine chain per message on the hot path."""

    def send_nowait(self, audio: bytes) -> bool:
        """Write ``audio`` now if the connection takes it without waiting (open, not pushing back);
        False: nothing was written, use :meth:`RecognizerStream.send`."""
        ...


class Recognizer(Protocol):
    """A factory of streams: one per call track."""

    #: Which recognizer this is (``deepgram``, ``elevenlabs``, ``embedded``): names it in statuses.
    name: str
    #: Fastest the recognizer accepts audio, as a multiple of real time (``None``: no known limit).
    #: Replay after a reconnect is paced below it (:mod:`bridge.recognizers.resilience`).
    max_ingest_rate: float | None

    async def open(self, options: StreamOptions) -> RecognizerStream:
        """Connect; raises :class:`RecognizerRejected` or :class:`RecognizerConnectError`."""
        ...


__all__ = [
    "Recognizer",
    "RecognizerConnectError",
    "RecognizerError",
    "RecognizerEvent",
    "RecognizerInputError",
    "RecognizerProtocolError",
    "RecognizerRejected",
    "RecognizerStream",
    "RecognizerThrottled",
    "SendsNow",
    "SpeechStarted",
    "StreamOptions",
    "Transcript",
    "UtteranceEnded",
]
