"""ElevenLabs Scribe v2 Realtime client and its wire messages (PROTOCOLS.md §3).

Scribe differs from Deepgram in ways this module hides behind :class:`RecognizerStream`: messages
are tagged by ``message_type``, audio travels base64 in JSON chunks (we batch Twilio's 20 ms frames
into >= 100 ms), partials carry no times (we estimate them from the audio sent), and there is no
keepalive message, so :meth:`ElevenLabsStream.keepalive` sends mu-law silence and every time we yield
is mapped back onto the caller's audio clock with that inserted silence taken out.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from bridge.events import Word
from bridge.recognizer import (
    RecognizerConnectError,
    RecognizerError,
    RecognizerEvent,
    RecognizerProtocolError,
    RecognizerRejected,
    StreamOptions,
    Transcript,
)

logger = logging.getLogger(__name__)

# -- wire messages ------------------------------------------------------------------------------


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


# -- client ---------------------------------------------------------------------------------------


def realtime_query(options: StreamOptions, model_id: str) -> str:
    if options.encoding == "mulaw" and options.sample_rate == 8000:
        audio_format = "ulaw_8000"
    else:
        audio_format = f"pcm_{options.sample_rate}"
    params = {
        "model_id": model_id,
        "audio_format": audio_format,
        "commit_strategy": "vad",
        "include_timestamps": "true",
    }
    if options.utterance_end_ms is not None:
        params["vad_silence_threshold_secs"] = f"{min(3.0, max(0.3, options.utterance_end_ms / 1000)):g}"
    if options.language:
        params["language_code"] = options.language
    return urlencode(params)


class ElevenLabsRecognizer:
    """Opens Scribe v2 Realtime streams."""

    name = "elevenlabs"

    def __init__(
        self,
        url: str = "wss://api.elevenlabs.io",
        api_key: str = "",
        model_id: str = "scribe_v2_realtime",
        *,
        open_timeout: float = 10.0,
        chunk_seconds: float = 0.1,
        max_garbage: int = 10,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.model_id = model_id
        self.open_timeout = open_timeout
        self.chunk_seconds = chunk_seconds
        self.max_garbage = max_garbage

    def realtime_url(self, options: StreamOptions) -> str:
        return f"{self.url}/v1/speech-to-text/realtime?{realtime_query(options, options.model or self.model_id)}"

    async def open(self, options: StreamOptions) -> ElevenLabsStream:
        headers = {"xi-api-key": self.api_key} if self.api_key else {}
        log_extra = {"call_sid": options.call_sid, "track": options.track}
        try:
            ws = await connect(
                self.realtime_url(options),
                additional_headers=headers,
                open_timeout=self.open_timeout,
                compression=None,
                proxy=None,
                close_timeout=2.0,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            body = exc.response.body.decode(errors="replace")[:200] if exc.response.body else ""
            message = f"ElevenLabs refused the upgrade: HTTP {status} {body}".rstrip()
            logger.warning("%s", message, extra=log_extra)
            if 400 <= status < 500 and status not in (408, 429):
                raise RecognizerRejected(message, code=status, reason=body) from exc
            raise RecognizerConnectError(message, code=status, reason=body) from exc
        except InvalidURI as exc:
            raise RecognizerRejected(f"invalid recognizer URL {self.url!r}: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            logger.warning("cannot connect to %s: %r", self.url, exc, extra=log_extra)
            raise RecognizerConnectError(f"cannot connect to {self.url}: {exc!r}") from exc
        return ElevenLabsStream(
            ws, options, chunk_bytes=round(self.chunk_seconds * options.bytes_per_second), max_garbage=self.max_garbage
        )


_END = object()


class ElevenLabsStream:
    """One Scribe realtime connection for one call track."""

    def __init__(
        self, ws: ClientConnection, options: StreamOptions, *, chunk_bytes: int = 800, max_garbage: int = 10
    ) -> None:
        self._ws = ws
        self.options = options
        self._bps = options.bytes_per_second
        self._log_extra = {"call_sid": options.call_sid, "track": options.track}
        self._chunk_bytes = max(1, chunk_bytes)
        self._max_garbage = max_garbage
        self._pending = bytearray()
        # Audio clock: bytes sent on the connection (caller audio + inserted silence).
        self._conn_bytes = 0
        self._caller_bytes = 0
        # Inserted silence, as parallel sorted lists: connection time it began, and the total
        # silence (seconds) inserted up to and including it.
        self._silence_at: list[float] = []
        self._silence_total: list[float] = []
        self._silence_len: list[float] = []
        self._last_final_end = 0.0
        self._uncommitted = False
        self._held: CommittedTranscript | None = None
        self._committed = asyncio.Event()
        self._closing = False
        self.garbage_count = 0
        self.session_id = ""
        self._queue: asyncio.Queue[RecognizerEvent | RecognizerError | object] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read(), name=f"elevenlabs-reader-{options.call_sid}")

    # -- sending -------------------------------------------------------------------------------

    async def send(self, audio: bytes) -> None:
        if not audio:
            return
        self._pending += audio
        self._caller_bytes += len(audio)
        if len(self._pending) >= self._chunk_bytes:
            await self._flush()

    async def _flush(self, *, commit: bool = False) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        if data and self._conn_bytes + len(data) > 0:
            self._uncommitted = True
        if not data and not commit:
            return
        self._conn_bytes += len(data)
        chunk = InputAudioChunk(
            audio_base_64=base64.b64encode(data).decode(), commit=commit, sample_rate=self.options.sample_rate
        )
        try:
            await self._ws.send(encode(chunk).decode())
        except ConnectionClosed as exc:
            raise self._closed_error() from exc

    async def keepalive(self) -> None:
        """No keepalive message exists: send 100 ms of silence, remembered so times can skip it."""
        await self._flush()
        silence = self._chunk_bytes
        seconds = silence / self._bps
        self._silence_at.append(self._conn_bytes / self._bps)
        self._silence_len.append(seconds)
        self._silence_total.append((self._silence_total[-1] if self._silence_total else 0.0) + seconds)
        self._pending += b"\xff" * silence if self.options.encoding == "mulaw" else b"\x00" * silence
        await self._flush()

    async def finalize(self) -> None:
        await self._flush(commit=True)

    async def close(self, timeout: float = 5.0) -> None:
        """Commit what is buffered and wait (bounded) for its committed transcript, then close."""
        if not self._closing and not self._reader.done():
            self._closing = True
            self._committed.clear()
            try:
                await self._flush(commit=True)
                if self._uncommitted:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._committed.wait(), timeout)
            except RecognizerError:
                pass
        self._closing = True
        if not self._reader.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), max(0.1, timeout))
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def events(self) -> AsyncIterator[RecognizerEvent]:
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)
                return
            if isinstance(item, RecognizerError):
                self._queue.put_nowait(_END)
                raise item
            yield item  # type: ignore[misc]

    # -- clocks --------------------------------------------------------------------------------

    def caller_time(self, t: float) -> float:
        """Map connection audio time ``t`` onto the caller's audio (inserted silence removed)."""
        i = bisect.bisect_right(self._silence_at, t) - 1
        if i < 0:
            return t
        before = self._silence_total[i] - self._silence_len[i]
        inside = min(t - self._silence_at[i], self._silence_len[i])
        return t - before - inside

    def _audio_end(self) -> float:
        return self._caller_bytes / self._bps

    # -- receiving -----------------------------------------------------------------------------

    def _closed_error(self) -> RecognizerConnectError:
        code, reason = self._ws.close_code, self._ws.close_reason or ""
        return RecognizerConnectError(
            f"ElevenLabs connection closed: {code} {reason}".rstrip(), code=code, reason=reason
        )

    def _emit_held(self) -> None:
        """A committed transcript whose timestamped twin never came: yield it with estimated times."""
        held, self._held = self._held, None
        if held is None or not held.text.strip():
            return
        end = max(self._last_final_end, self._audio_end())
        self._queue.put_nowait(Transcript(is_final=True, start=self._last_final_end, end=end, text=held.text.strip()))
        self._last_final_end = end

    def _final(self, message: CommittedTranscriptWithTimestamps) -> None:
        words = [w for w in message.words if w.type == "word" and w.start is not None and w.end is not None]
        mapped = tuple(
            Word(
                word=w.text.strip(),
                start=self.caller_time(w.start or 0.0),
                end=self.caller_time(w.end or 0.0),
                confidence=_confidence(w.logprob),
                punctuated_word=w.text.strip(),
            )
            for w in words
        )
        text = message.text.strip()
        if mapped:
            start, end = mapped[0].start, mapped[-1].end
        else:
            start, end = self._last_final_end, max(self._last_final_end, self._audio_end())
        if not text:
            return
        confidence = sum(w.confidence for w in mapped) / len(mapped) if mapped else 0.0
        self._queue.put_nowait(
            Transcript(
                is_final=True,
                start=start,
                end=end,
                text=text,
                speech_final=True,
                from_finalize=self._closing,
                confidence=confidence,
                words=mapped,
            )
        )
        self._last_final_end = max(self._last_final_end, end)

    async def _read(self) -> None:
        consecutive_garbage = 0
        end: RecognizerError | object = _END
        fatal: RecognizerError | None = None
        try:
            async for data in self._ws:
                try:
                    message = decode_server(data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    consecutive_garbage += 1
                    self.garbage_count += 1
                    logger.warning("unparseable ElevenLabs message (%s): %.200r", exc, data, extra=self._log_extra)
                    if consecutive_garbage >= self._max_garbage:
                        fatal = RecognizerProtocolError(f"{consecutive_garbage} unparseable messages from ElevenLabs")
                        await self._ws.close(1002, "protocol error")
                        break
                    continue
                consecutive_garbage = 0
                if isinstance(message, CommittedTranscriptWithTimestamps):
                    self._held = None
                    self._uncommitted = False
                    self._final(message)
                    self._committed.set()
                elif isinstance(message, CommittedTranscript):
                    self._emit_held()
                    self._uncommitted = False
                    self._held = message
                    if not message.text.strip():
                        self._held = None
                        self._committed.set()
                elif isinstance(message, PartialTranscript):
                    self._emit_held()
                    if message.text.strip():
                        self._queue.put_nowait(
                            Transcript(
                                is_final=False,
                                start=self._last_final_end,
                                end=max(self._last_final_end, self._audio_end()),
                                text=message.text.strip(),
                            )
                        )
                elif isinstance(message, SessionStarted):
                    self.session_id = message.session_id
                elif isinstance(message, WarningMessage):
                    logger.warning("ElevenLabs warning: %s", message.warning, extra=self._log_extra)
                elif isinstance(message, ErrorMessage):
                    logger.warning("ElevenLabs %s: %s", message.message_type, message.error, extra=self._log_extra)
                    if message.message_type in REJECTING_ERRORS:
                        fatal = RecognizerRejected(
                            f"ElevenLabs {message.message_type}: {message.error}", reason=message.message_type
                        )
                    elif message.message_type not in SOFT_ERRORS:
                        fatal = RecognizerConnectError(
                            f"ElevenLabs {message.message_type}: {message.error}", reason=message.message_type
                        )
                    if fatal is not None:  # Scribe closes after an error; do not wait for it
                        await self._ws.close()
                        break
            self._emit_held()
            if fatal is not None:
                end = fatal
            elif not self._closing:
                end = self._closed_error()
        except ConnectionClosed:
            self._emit_held()
            if fatal is not None:
                end = fatal
            elif not self._closing:
                end = self._closed_error()
        except Exception as exc:
            logger.exception("ElevenLabs reader failed", extra=self._log_extra)
            end = RecognizerConnectError(f"ElevenLabs reader failed: {exc!r}")
        finally:
            self._emit_held()
            self._committed.set()
            self._queue.put_nowait(end)


def _confidence(logprob: float | None) -> float:
    if logprob is None:
        return 0.0
    return max(0.0, min(1.0, math.exp(logprob)))


__all__ = [
    "CommittedTranscript",
    "CommittedTranscriptWithTimestamps",
    "ELWord",
    "ElevenLabsRecognizer",
    "ElevenLabsStream",
    "ErrorMessage",
    "InputAudioChunk",
    "PartialTranscript",
    "SessionStarted",
    "decode_server",
    "realtime_query",
]
