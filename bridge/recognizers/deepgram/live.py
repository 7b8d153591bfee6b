"""Deepgram live (``/v1/listen``) client; also the client of the embedded recognizer.

One :class:`DeepgramStream` is one WebSocket
(https://developers.deepgram.com/docs/lower-level-websockets). Audio goes out as binary frames
exactly as Twilio sent it; server messages become typed :mod:`bridge.recognizers.base` events.
Keepalive, reconnect and replay are not done here: :mod:`bridge.recognizers.resilience` wraps this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import urlencode

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from bridge.events import Word
from bridge.recognizers.base import (
    RecognizerError,
    RecognizerEvent,
    SpeechStarted,
    StreamOptions,
    Transcript,
    UtteranceEnded,
)
from bridge.recognizers.deepgram import wire
from bridge.recognizers.websocket import END, WebSocketStream, open_socket

logger = logging.getLogger(__name__)

_KEEPALIVE = wire.encode(wire.KeepAlive()).decode()
_FINALIZE = wire.encode(wire.Finalize()).decode()
_CLOSE_STREAM = wire.encode(wire.CloseStream()).decode()
#: HTTP statuses on the upgrade that retrying cannot fix (auth, parameters).
_REJECT_STATUSES = frozenset({400, 401, 402, 403, 404, 405, 413, 415, 422})


def _flag(value: bool) -> str:
    return "true" if value else "false"


def listen_query(options: StreamOptions, model: str, extra: dict[str, str] | None = None) -> str:
    """The ``/v1/listen`` query string for ``options`` (booleans lowercase, as Deepgram's SDK sends)."""
    params: dict[str, str] = {}
    if model:
        params["model"] = model
    params.update(
        language=options.language,
        encoding=options.encoding,
        sample_rate=str(options.sample_rate),
        channels="1",
        interim_results=_flag(options.interim_results),
        endpointing="false" if options.endpointing_ms is None else str(options.endpointing_ms),
    )
    if options.interim_results and options.utterance_end_ms is not None:
        params["utterance_end_ms"] = str(options.utterance_end_ms)
    params.update(
        vad_events=_flag(options.vad_events),
        punctuate=_flag(options.punctuate),
        smart_format=_flag(options.smart_format),
    )
    if extra:
        params.update(extra)
    return urlencode(params)


def to_event(message: wire.ServerMessage) -> RecognizerEvent | None:
    """Map one Deepgram server message to a recognizer event (``None``: nothing to yield)."""
    if isinstance(message, wire.Results):
        alternatives = message.channel.alternatives
        alt = alternatives[0] if alternatives else wire.DGAlternative(transcript="")
        words = tuple(
            Word(
                word=w.word,
                start=w.start,
                end=w.end,
                confidence=w.confidence,
                punctuated_word=w.punctuated_word,
            )
            for w in alt.words
        )
        return Transcript(
            is_final=message.is_final or message.speech_final,
            start=message.start,
            end=message.start + message.duration,
            text=alt.transcript,
            speech_final=message.speech_final,
            from_finalize=message.from_finalize,
            confidence=alt.confidence,
            words=words,
        )
    if isinstance(message, wire.SpeechStarted):
        return SpeechStarted(timestamp=message.timestamp)
    if isinstance(message, wire.UtteranceEnd):
        return UtteranceEnded(last_word_end=message.last_word_end)
    return None


class DeepgramRecognizer:
    """Opens Deepgram-protocol live streams (Deepgram itself, or the embedded recognizer)."""

    name = "deepgram"

    def __init__(
        self,
        url: str = "wss://api.deepgram.com",
        api_key: str = "",
        model: str = "nova-3",
        extra_params: dict[str, str] | None = None,
        *,
        open_timeout: float = 10.0,
        max_garbage: int = 10,
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.extra_params = dict(extra_params or {})
        self.open_timeout = open_timeout
        #: Consecutive unparseable server messages tolerated before the stream fails.
        self.max_garbage = max_garbage

    def listen_url(self, options: StreamOptions) -> str:
        model = options.model or self.model
        return f"{self.url}/v1/listen?{listen_query(options, model, self.extra_params)}"

    async def open(self, options: StreamOptions) -> DeepgramStream:
        ws = await open_socket(
            self.listen_url(options),
            {"Authorization": f"Token {self.api_key}"} if self.api_key else {},
            options,
            vendor="Deepgram",
            open_timeout=self.open_timeout,
            rejects=lambda status: status in _REJECT_STATUSES,
            detail=_dg_error,
        )
        return DeepgramStream(ws, options, max_garbage=self.max_garbage)


def _dg_error(status: int, headers: Headers, body: bytes) -> str:
    """Deepgram puts the reason of a refused upgrade in the ``dg-error`` header."""
    request_id = headers.get("dg-request-id", "")
    if request_id:
        logger.info("Deepgram refused request %s with HTTP %d", request_id, status)
    return str(headers.get("dg-error", ""))


class DeepgramStream(WebSocketStream):
    """One live Deepgram connection for one call track."""

    vendor = "Deepgram"

    def __init__(self, ws: ClientConnection, options: StreamOptions, *, max_garbage: int = 10) -> None:
        self.metadata: wire.Metadata | None = None
        super().__init__(ws, options, max_garbage=max_garbage)

    async def send(self, audio: bytes) -> None:
        if audio:
            await self._send(audio)

    async def keepalive(self) -> None:
        await self._send(_KEEPALIVE)

    async def finalize(self) -> None:
        await self._send(_FINALIZE)

    async def close(self, timeout: float = 5.0) -> None:
        """Send CloseStream and wait (bounded) for the last Results and the server's close."""
        if not self._closing:
            self._closing = True
            with contextlib.suppress(ConnectionClosed):
                await self._ws.send(_CLOSE_STREAM)
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        except TimeoutError:
            logger.warning("Deepgram did not close within %.1fs; closing", timeout, extra=self._log_extra)
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._queue.put_nowait(END)
        finally:
            if timeout <= 0:
                self._ws.transport.abort()
            else:
                await self._ws.close()

    def on_message(self, data: str | bytes) -> RecognizerError | None:
        if isinstance(data, bytes):
            raise msgspec.DecodeError("binary frame from server")
        message = wire.decode_server(data)
        if isinstance(message, wire.Metadata):
            self.metadata = message
        elif isinstance(message, wire.Error):
            logger.warning("Deepgram error %s: %s %s", message.variant, message.description, message.message,
                           extra=self._log_extra)  # fmt: skip
        event = to_event(message)
        if event is not None:
            self.emit(event)
        return None


__all__ = ["DeepgramRecognizer", "DeepgramStream", "listen_query", "to_event"]
