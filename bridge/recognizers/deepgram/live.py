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
from typing import Literal
from urllib.parse import urlencode

import msgspec
from websockets.asyncio.client import ClientConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from bridge.events import Word
from bridge.recognizers.base import (
    RecognizerConnectError,
    RecognizerError,
    RecognizerEvent,
    RecognizerInputError,
    RecognizerRejected,
    SpeechStarted,
    StreamOptions,
    Transcript,
    UtteranceEnded,
)
from bridge.recognizers.deepgram import wire
from bridge.recognizers.websocket import WebSocketStream, open_socket

logger = logging.getLogger(__name__)

_KEEPALIVE = wire.encode(wire.KeepAlive()).decode()
_FINALIZE = wire.encode(wire.Finalize()).decode()
_CLOSE_STREAM = wire.encode(wire.CloseStream()).decode()
#: HTTP statuses on the upgrade that retrying cannot fix (auth, parameters).
_REJECT_STATUSES = frozenset({400, 401, 402, 403, 404, 405, 413, 415, 422})
#: "Deepgram can accept audio up to 1.25x real time"
#: (https://developers.deepgram.com/docs/recovering-from-connection-errors-and-timeouts-when-live-streaming-audio).
DEEPGRAM_INGEST_RATE = 1.25
KeytermParam = Literal["keyterm", "keywords"]


def _flag(value: bool) -> str:
    return "true" if value else "false"


def keyterm_param(model: str) -> KeytermParam:
    """Nova-3 and Flux take ``keyterm`` (Keyterm Prompting); earlier models take ``keywords``
    (https://developers.deepgram.com/docs/keyterm, https://developers.deepgram.com/docs/keywords)."""
    return "keyterm" if model.startswith(("nova-3", "flux")) else "keywords"


def listen_query(
    options: StreamOptions, model: str, extra: dict[str, str] | None = None, *, keyterms_as: KeytermParam = "keyterm",
    redact: tuple[str, ...] = (),
) -> str:
    """The ``/v1/listen`` query string for ``options`` (booleans lowercase, as Deepgram's SDK sends);
    keyterms and ``redact`` values go out as one repeated parameter each, as the SDK sends lists."""
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
    pairs = list(params.items()) + [(keyterms_as, term) for term in options.keyterms]
    pairs += [("redact", r) for r in redact]
    return urlencode(pairs)


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

    def __init__(
        self,
        url: str = "wss://api.deepgram.com",
        api_key: str = "",
        model: str = "nova-3",
        extra_params: dict[str, str] | None = None,
        *,
        name: str = "deepgram",
        max_ingest_rate: float | None = DEEPGRAM_INGEST_RATE,
        keyterms_as: KeytermParam | None = None,
        open_timeout: float = 10.0,
        ping_interval: float | None = 5.0,
        ping_timeout: float | None = 5.0,
        max_garbage: int = 10,
        redact: tuple[str, ...] = (),
    ) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.model = model
        self.extra_params = dict(extra_params or {})
        self.name = name
        self.max_ingest_rate = max_ingest_rate
        #: ``None``: by model (:func:`keyterm_param`); the embedded recognizer takes ``keyterm``.
        self.keyterms_as = keyterms_as
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        #: Consecutive unparseable server messages tolerated before the stream fails.
        self.max_garbage = max_garbage
        #: Deepgram's own redaction (``pci``, ``ssn``): a second line of defence, never the only one.
        self.redact = redact

    def listen_url(self, options: StreamOptions) -> str:
        model = options.model or self.model
        query = listen_query(options, model, self.extra_params, keyterms_as=self.keyterms_as or keyterm_param(model),
                             redact=self.redact)  # fmt: skip
        return f"{self.url}/v1/listen?{query}"

    async def open(self, options: StreamOptions) -> DeepgramStream:
        ws = await open_socket(
            self.listen_url(options),
            {"Authorization": f"Token {self.api_key}"} if self.api_key else {},
            options,
            vendor="Deepgram",
            open_timeout=self.open_timeout,
            rejects=lambda status: status in _REJECT_STATUSES,
            detail=_dg_error,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
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

    def send_nowait(self, audio: bytes) -> bool:
        return self._send_nowait(audio) if audio else True

    async def keepalive(self) -> None:
        await self._send(_KEEPALIVE)

    async def finalize(self) -> None:
        await self._send(_FINALIZE)

    async def commit(self) -> None:
        """``Finalize`` closes the segment at the audio sent so far and answers with its final
        (https://developers.deepgram.com/docs/finalize); the stream goes on."""
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
            await self._abandon(f"did not finish within {timeout:.1f}s of CloseStream")
        finally:
            if timeout <= 0:
                self._ws.transport.abort()
            else:
                await self._ws.close()

    def error_for_close(self, code: int | None, reason: str) -> RecognizerError:
        """1008 is Deepgram's "cannot use what you sent": ``DATA-0000`` is audio it cannot decode
        (wrong encoding or rate); a reconnect would replay the same bytes into the same close."""
        if code == wire.CLOSE_DATA_ERROR:
            detail = f"Deepgram closed {code} {reason}".rstrip()
            if reason.startswith("DATA"):
                return RecognizerInputError(f"{detail}: it cannot decode the audio (encoding/sample rate)",
                                            code=code, reason=reason)  # fmt: skip
            return RecognizerRejected(detail, code=code, reason=reason)
        return RecognizerConnectError(f"Deepgram connection closed: {code} {reason}".rstrip(), code=code,
                                      reason=reason)  # fmt: skip

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


__all__ = ["DEEPGRAM_INGEST_RATE", "DeepgramRecognizer", "DeepgramStream", "keyterm_param", "listen_query", "to_event"]
