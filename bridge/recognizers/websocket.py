"""What every recognizer WebSocket client shares: opening the socket, and the reader that turns
server messages into :mod:`bridge.recognizers.base` events.

A vendor client subclasses :class:`WebSocketStream` and says how to read one server message
(:meth:`WebSocketStream.on_message`); garbage counting, the event queue, how the stream ends and
which error it ends with are done here once. Reconnect and replay are not: they live in
:mod:`bridge.recognizers.resilience`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

from bridge.recognizers.base import (
    RecognizerConnectError,
    RecognizerError,
    RecognizerEvent,
    RecognizerProtocolError,
    RecognizerRejected,
    RecognizerThrottled,
    StreamOptions,
)

logger = logging.getLogger(__name__)

END = object()


async def open_socket(
    url: str,
    headers: dict[str, str],
    options: StreamOptions,
    *,
    vendor: str,
    open_timeout: float,
    rejects: Callable[[int], bool],
    detail: Callable[[int, Headers, bytes], str],
    max_size: int | None = 2**22,
    ping_interval: float | None = 5.0,
    ping_timeout: float | None = 5.0,
) -> ClientConnection:
    """Connect, mapping every failure to :class:`RecognizerRejected` (``rejects(status)``: retrying
    cannot help), :class:`RecognizerThrottled` (HTTP 429) or :class:`RecognizerConnectError` (a
    reconnect may).

    WebSocket pings (RFC 6455, answered by any server) detect a recognizer that hangs with the
    connection open within ``ping_interval + ping_timeout``: no vendor message says "still alive"
    during silence, so the transport has to.
    """
    log_extra = {"call_sid": options.call_sid, "track": options.track}
    try:
        return await connect(
            url, additional_headers=headers, open_timeout=open_timeout, compression=None, proxy=None,
            max_size=max_size, close_timeout=min(2.0, ping_timeout or 2.0), ping_interval=ping_interval,
            ping_timeout=ping_timeout,
        )  # fmt: skip
    except InvalidStatus as exc:
        status = exc.response.status_code
        reason = detail(status, exc.response.headers, bytes(exc.response.body or b""))
        message = f"{vendor} refused the upgrade: HTTP {status} {reason}".rstrip()
        logger.warning("%s", message, extra=log_extra)
        if rejects(status):
            raise RecognizerRejected(message, code=status, reason=reason) from exc
        if status == 429:
            raise RecognizerThrottled(message, code=status, reason=reason) from exc
        raise RecognizerConnectError(message, code=status, reason=reason) from exc
    except InvalidURI as exc:
        raise RecognizerRejected(f"invalid recognizer URL {url.split('?')[0]!r}: {exc}") from exc
    except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed) as exc:
        where = url.split("?")[0]
        logger.warning("cannot connect to %s: %r", where, exc, extra=log_extra)
        raise RecognizerConnectError(f"cannot connect to {where}: {exc!r}") from exc


class _MaskKeys:
    """Client masking keys (RFC 6455 section 5.3: fresh, unpredictable, from a strong source of
    entropy) drawn from the operating system's CSPRNG a page at a time, not one system call each."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._pool = b""
        self._at = size

    def next(self) -> bytes:
        at = self._at
        if at >= self._size:
            self._pool = os.urandom(self._size)
            at = 0
        self._at = at + 4
        return self._pool[at : at + 4]


_mask_keys = _MaskKeys()


def binary_frame(payload: bytes) -> bytes:
    """One masked client frame holding ``payload`` as a whole binary message (RFC 6455 section 5.2)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 65536:
        head = bytes((0x82, 0xFE)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x82, 0xFF)) + n.to_bytes(8, "big")
    key = _mask_keys.next()
    return head + key + apply_mask(payload, key)


class WebSocketStream:
    """One recognizer connection for one call track; a reader task fills the event queue."""

    vendor: ClassVar[str] = "recognizer"

    def __init__(self, ws: ClientConnection, options: StreamOptions, *, max_garbage: int = 10) -> None:
        self._ws = ws
        self.options = options
        self._log_extra = {"call_sid": options.call_sid, "track": options.track}
        self._queue: asyncio.Queue[RecognizerEvent | RecognizerError | object] = asyncio.Queue()
        #: Consecutive unparseable server messages tolerated before the stream fails.
        self._max_garbage = max_garbage
        #: Unparseable messages received on this connection (all of them, not only consecutive).
        self.garbage_count = 0
        self._closing = False
        #: Why the reader was given up on during close (its end is then an error: finals are missing).
        self._abandoned: str | None = None
        self._error: RecognizerError | None = None
        self._reader = asyncio.create_task(self._read(), name=f"{self.vendor}-reader-{options.call_sid}")

    # -- for subclasses --------------------------------------------------------------------

    def on_message(self, data: str | bytes) -> RecognizerError | None:
        """Handle one server message (put events with :meth:`emit`). Return an error to end the
        stream with it; raise ``msgspec.DecodeError``/``ValidationError`` on garbage."""
        raise NotImplementedError

    def on_end(self) -> None:
        """The connection is over (any way): last chance to emit what is held back."""

    def emit(self, event: RecognizerEvent) -> None:
        self._queue.put_nowait(event)

    async def _abandon(self, why: str) -> None:
        """Stop reading a connection whose close never completed; the stream then ends with an error,
        so the resilience layer replays what no final covered instead of taking the silence as done."""
        self._abandoned = why
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    # -- the stream ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def events(self) -> AsyncIterator[RecognizerEvent]:
        while True:
            item = await self._queue.get()
            if item is END:
                self._queue.put_nowait(END)  # later iterators end too
                return
            if isinstance(item, RecognizerError):
                self._queue.put_nowait(END)
                raise item
            yield item  # type: ignore[misc]

    def closed_error(self, exc: ConnectionClosed | None = None) -> RecognizerError:
        """The error of a connection the server closed (or that dropped)."""
        code = self._ws.close_code
        reason = self._ws.close_reason or ""
        if code is None and exc is not None and exc.rcvd is not None:
            code, reason = exc.rcvd.code, exc.rcvd.reason
        return self.error_for_close(code, reason)

    def error_for_close(self, code: int | None, reason: str) -> RecognizerError:
        """What a close frame means; vendors override this for the codes that forbid a retry."""
        return RecognizerConnectError(f"{self.vendor} connection closed: {code} {reason}".rstrip(), code=code,
                                      reason=reason)  # fmt: skip

    def _send_nowait(self, data: bytes) -> bool:
        """Write a binary message without waiting: only while the connection is open, no fragmented
        message is under way and the transport is not pushing back (otherwise :meth:`_send` waits
        as it should). The frame is built here (:func:`binary_frame`), not by ``websockets``' sans-I/O
        protocol, which tracks no state for a whole data frame: its frame object and a system call
        for every mask key cost more than the rest of the hot path's send."""
        ws = self._ws
        if ws.protocol.state is not State.OPEN or ws.send_in_progress is not None or ws.paused:
            return False
        transport = ws.transport
        if transport.is_closing():
            return False
        transport.write(binary_frame(data))
        return True

    async def _send(self, data: str | bytes) -> None:
        try:
            await self._ws.send(data)
        except ConnectionClosed as exc:
            raise self.closed_error(exc) from exc

    async def _read(self) -> None:
        """Read until the connection ends; the last queue item says how it ended."""
        consecutive_garbage = 0
        end: Any = END
        try:
            async for data in self._ws:
                try:
                    fatal = self.on_message(data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    consecutive_garbage += 1
                    self.garbage_count += 1
                    # Its size, never its content: a transcript message may hold card data (docs/redaction.md).
                    logger.warning("unparseable %s message (%s), %d bytes", self.vendor, exc, len(data),
                                   extra=self._log_extra)  # fmt: skip
                    if consecutive_garbage >= self._max_garbage:
                        end = RecognizerProtocolError(
                            f"{consecutive_garbage} unparseable messages in a row from {self.vendor}"
                        )
                        await self._ws.close(1002, "protocol error")
                        return
                    continue
                consecutive_garbage = 0
                if fatal is not None:  # the server closes after an error; do not wait for it
                    end = fatal
                    await self._ws.close()
                    return
            if not self._closing:
                end = self.closed_error()
        except ConnectionClosed as exc:
            if not self._closing or isinstance(exc, ConnectionClosedError):  # lost, even while closing
                end = self.closed_error(exc)
            logger.info("%s connection closed: %s", self.vendor, exc, extra=self._log_extra)
        except Exception as exc:  # never let a reader crash silently: surface it on events()
            logger.exception("%s reader failed", self.vendor, extra=self._log_extra)
            end = RecognizerConnectError(f"{self.vendor} reader failed: {exc!r}")
        finally:
            self.on_end()
            if self._abandoned is not None and not isinstance(end, RecognizerError):
                end = RecognizerConnectError(f"{self.vendor} {self._abandoned}")
            if isinstance(end, RecognizerError):
                self._error = end
            self._queue.put_nowait(end)


__all__ = ["END", "WebSocketStream", "binary_frame", "open_socket"]
