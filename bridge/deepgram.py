"""Deepgram live (``/v1/listen``) client; also the client of the embedded recognizer.

One :class:`DeepgramStream` is one WebSocket. Audio goes out as binary frames exactly as Twilio sent
it; a reader task turns server messages into typed :mod:`bridge.recognizer` events on a queue.
Keepalive, reconnect and replay are not done here: :mod:`bridge.resilience` wraps this stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from bridge import deepgram_wire as wire
from bridge.events import Word
from bridge.recognizer import (
    RecognizerConnectError,
    RecognizerError,
    RecognizerEvent,
    RecognizerProtocolError,
    RecognizerRejected,
    SpeechStarted,
    StreamOptions,
    Transcript,
    UtteranceEnded,
)

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
        url = self.listen_url(options)
        headers = {"Authorization": f"Token {self.api_key}"} if self.api_key else {}
        log_extra = {"call_sid": options.call_sid, "track": options.track}
        try:
            ws = await connect(
                url,
                additional_headers=headers,
                open_timeout=self.open_timeout,
                compression=None,
                proxy=None,
                max_size=2**22,
                close_timeout=2.0,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            dg_error = exc.response.headers.get("dg-error", "")
            request_id = exc.response.headers.get("dg-request-id", "")
            message = f"Deepgram refused the upgrade: HTTP {status} {dg_error}".rstrip()
            logger.warning("%s (request %s)", message, request_id, extra=log_extra)
            if status in _REJECT_STATUSES:
                raise RecognizerRejected(message, code=status, reason=dg_error) from exc
            raise RecognizerConnectError(message, code=status, reason=dg_error) from exc
        except InvalidURI as exc:
            raise RecognizerRejected(f"invalid recognizer URL {self.url!r}: {exc}") from exc
        except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
            logger.warning("cannot connect to %s: %r", self.url, exc, extra=log_extra)
            raise RecognizerConnectError(f"cannot connect to {self.url}: {exc!r}") from exc
        return DeepgramStream(ws, options, max_garbage=self.max_garbage)


_END = object()


class DeepgramStream:
    """One live Deepgram connection for one call track."""

    def __init__(self, ws: ClientConnection, options: StreamOptions, *, max_garbage: int = 10) -> None:
        self._ws = ws
        self.options = options
        self._log_extra = {"call_sid": options.call_sid, "track": options.track}
        self._queue: asyncio.Queue[RecognizerEvent | RecognizerError | object] = asyncio.Queue()
        self._max_garbage = max_garbage
        #: Unparseable messages received on this connection (all of them, not only consecutive).
        self.garbage_count = 0
        self._closing = False
        self._error: RecognizerError | None = None
        self.metadata: wire.Metadata | None = None
        self._reader = asyncio.create_task(self._read(), name=f"deepgram-reader-{options.call_sid}")

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def send(self, audio: bytes) -> None:
        if not audio:
            return
        try:
            await self._ws.send(audio)
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc

    async def _send_text(self, text: str) -> None:
        try:
            await self._ws.send(text)
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from exc

    async def keepalive(self) -> None:
        await self._send_text(_KEEPALIVE)

    async def finalize(self) -> None:
        await self._send_text(_FINALIZE)

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
            self._queue.put_nowait(_END)
        finally:
            if timeout <= 0:
                self._ws.transport.abort()
            else:
                await self._ws.close()

    async def events(self) -> AsyncIterator[RecognizerEvent]:
        while True:
            item = await self._queue.get()
            if item is _END:
                self._queue.put_nowait(_END)  # later iterators end too
                return
            if isinstance(item, RecognizerError):
                self._queue.put_nowait(_END)
                raise item
            yield item  # type: ignore[misc]

    def _closed_error(self, exc: ConnectionClosed | None = None) -> RecognizerConnectError:
        code = self._ws.close_code
        reason = self._ws.close_reason or ""
        if code is None and exc is not None and exc.rcvd is not None:
            code, reason = exc.rcvd.code, exc.rcvd.reason
        return RecognizerConnectError(f"Deepgram connection closed: {code} {reason}".rstrip(), code=code, reason=reason)

    async def _read(self) -> None:
        """Parse server messages until the connection ends; the last queue item says how it ended."""
        consecutive_garbage = 0
        end: RecognizerError | object = _END
        try:
            async for data in self._ws:
                try:
                    if isinstance(data, bytes):
                        raise msgspec.DecodeError("binary frame from server")
                    message = wire.decode_server(data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    consecutive_garbage += 1
                    self.garbage_count += 1
                    logger.warning("unparseable Deepgram message (%s): %.200r", exc, data, extra=self._log_extra)
                    if consecutive_garbage >= self._max_garbage:
                        end = RecognizerProtocolError(
                            f"{consecutive_garbage} unparseable messages in a row from Deepgram"
                        )
                        await self._ws.close(1002, "protocol error")
                        return
                    continue
                consecutive_garbage = 0
                if isinstance(message, wire.Metadata):
                    self.metadata = message
                elif isinstance(message, wire.Error):
                    logger.warning(
                        "Deepgram error %s: %s %s",
                        message.variant,
                        message.description,
                        message.message,
                        extra=self._log_extra,
                    )
                event = to_event(message)
                if event is not None:
                    self._queue.put_nowait(event)
            if not self._closing:
                end = self._closed_error()
        except ConnectionClosed as exc:
            if not self._closing:
                end = self._closed_error(exc)
            logger.info("Deepgram connection closed: %s", exc, extra=self._log_extra)
        except Exception as exc:  # never let a reader crash silently: surface it on events()
            logger.exception("Deepgram reader failed", extra=self._log_extra)
            end = RecognizerConnectError(f"Deepgram reader failed: {exc!r}")
        finally:
            if isinstance(end, RecognizerError):
                self._error = end
            self._queue.put_nowait(end)


__all__ = ["DeepgramRecognizer", "DeepgramStream", "listen_query", "to_event"]
