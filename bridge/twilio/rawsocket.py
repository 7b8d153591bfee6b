"""``/twilio/media`` on the bridge's own RFC 6455 server, beside uvicorn's ASGI WebSockets.

Twilio sends fifty small JSON text frames a second per track. Through the ASGI stack each one
crosses the WebSocket library's parser, an ASGI queue, Starlette's ``receive`` and a task switch;
here ``data_received`` unmasks every frame of one read into a deque and the session drains it (at
most one task switch per read, not one per frame). What decides anything is shared with the ASGI
route in :mod:`bridge.twilio.media`: the checks before the upgrade (:func:`screen_upgrade`), the
Media Streams state machine and the session that drives the call layer.

``bridge serve`` installs :func:`upgrade_protocol` as uvicorn's WebSocket protocol: an upgrade to
``/twilio/media`` gets a :class:`MediaWebSocket`, any other path (live subscribers, browser capture)
uvicorn's own protocol, as before.

Only what Twilio's side needs of RFC 6455 (https://datatracker.ietf.org/doc/html/rfc6455): masked
client frames, text messages (fragmented or not), ping/pong and the close handshake. No extension or
subprotocol is negotiated, so a client must not use one (RSV bits set: close 1002).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import logging
from collections.abc import Callable
from typing import Any, ClassVar, cast
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from uvicorn.config import Config
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

try:
    from websockets.speedups import apply_mask
except ImportError:  # websockets built without its C extension
    from websockets.utils import apply_mask

from bridge.twilio.media import (
    WS_MESSAGE_TOO_BIG,
    WS_PROTOCOL_ERROR,
    WS_UNSUPPORTED_DATA,
    PeerGone,
    ProtocolViolation,
    run_media_socket,
    screen_upgrade,
)

logger = logging.getLogger(__name__)

MEDIA_PATH = "/twilio/media"
WS_SERVICE_RESTART = 1012

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: Messages queued unread before the socket stops reading (TCP then pushes back on the sender).
_PAUSE_AT, _RESUME_AT = 512, 64
#: How long to wait for the peer's answer to our close frame before dropping the connection.
CLOSE_TIMEOUT = 5.0

_STATUS_TEXT = {400: "Bad Request", 403: "Forbidden", 426: "Upgrade Required", 500: "Internal Server Error",
                503: "Service Unavailable"}  # fmt: skip


class _BadHandshake(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key`` (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def _check_handshake(method: str, headers: dict[str, str]) -> str:
    """The client's key, once the request is a WebSocket upgrade this server can answer."""
    if method != "GET":
        raise _BadHandshake(400, "a WebSocket upgrade is a GET")
    if headers.get("sec-websocket-version", "").strip() != "13":
        raise _BadHandshake(426, "Sec-WebSocket-Version 13 is required")
    key = headers.get("sec-websocket-key", "").strip()
    try:
        valid = len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    if not valid:
        raise _BadHandshake(400, "invalid Sec-WebSocket-Key")
    return key


class MediaWebSocket(asyncio.Protocol):
    """One media socket, from the upgrade request to the closed connection.

    Two sides meet in a deque: the protocol callbacks (event loop) parse frames into it, the session
    task (:func:`bridge.twilio.media.run_media_socket`) takes whole messages out through
    :meth:`receive`; a violation found while parsing is queued as an exception, so the session
    closes the stream in order, with the code, after the messages before it.
    """

    def __init__(self, app: Starlette, config: Config, server_state: ServerState) -> None:
        self.app = app
        self.config = config
        self.server_state = server_state
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._request: bytes | None = None
        self._messages: collections.deque[bytes | Exception] = collections.deque()
        self._fragments: list[bytes] | None = None
        self._fragment_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._max: int = app.state.settings.max_frame_bytes
        self._upgraded = False
        self._read_paused = False
        self._parse_stopped = False
        self._failing = False
        self._skip = 0
        self._peer_closed = False
        self._close_sent = False
        self._lost = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._taker: Callable[[bytes], bool] | None = None

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self.server_state.connections.add(self)  # type: ignore[arg-type]  # uvicorn calls shutdown() on it

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            if self._skip:
                dropped = min(self._skip, len(data))
                self._skip -= dropped
                data = data[dropped:]
            if not self._parse_stopped and data:
                self._buf += data
                self._parse()
            return
        if self._request is not None:  # frames before our 101: keep them for after it
            self._buf += data
            return
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > 64 * 1024:
                self._respond(400, "request head too large")
            return
        self._request = bytes(self._buf[: end + 4])
        del self._buf[: end + 4]
        self._task = self.loop.create_task(self._run(self._request))
        self.server_state.tasks.add(self._task)
        self._task.add_done_callback(self.server_state.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.server_state.connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if not self._peer_closed:
            self._messages.append(PeerGone(1006))
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def shutdown(self) -> None:
        """uvicorn is shutting down (after ``bridge serve`` drained the calls): 1012, service restart."""
        if self._upgraded and not self._close_sent and not self._lost:
            self._send_close(WS_SERVICE_RESTART, "server shutting down")
            self._messages.append(PeerGone(WS_SERVICE_RESTART))
            self._wake()
        elif self.transport is not None and not self._upgraded:
            self.transport.close()

    # ---------------------------------------------------------------- MediaSocket

    async def receive(self) -> str | bytes:
        messages = self._messages
        while True:
            if messages:
                item = messages.popleft()
                if self._read_paused and len(messages) <= _RESUME_AT and self.transport is not None:
                    self._read_paused = False
                    self.transport.resume_reading()
                if type(item) is bytes:
                    return item
                assert isinstance(item, Exception)
                raise item
            if self._lost:
                raise PeerGone(1006)
            waiter = self._waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def close(self, code: int, reason: str) -> None:
        if not self._close_sent and not self._lost:
            self._send_close(code, reason)

    def offer_messages(self, taker: Callable[[bytes], bool] | None) -> None:
        self._taker = taker

    # ---------------------------------------------------------------- internals

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _run(self, request: bytes) -> None:
        state = self.app.state
        try:
            try:
                scope = await self._scope(request)
                key = _check_handshake(scope["method"], {k.decode("latin-1"): v.decode("latin-1")
                                                         for k, v in scope["headers"]})  # fmt: skip
            except _BadHandshake as bad:
                logger.warning("media upgrade refused (%s): %s", bad.status, bad.text, extra={"call_sid": None})
                self._respond(bad.status, bad.text)
                return
            refused = screen_upgrade(HTTPConnection(scope), state)
            if refused is not None and refused.status:
                self._respond(refused.status, refused.text)
                return
            self._accept(key)
            if refused is not None:
                await self.close(refused.code, refused.text)
                return
            await run_media_socket(self, state)
        except Exception:
            logger.exception("media socket failed", extra={"call_sid": None})
            if self.transport is not None:
                self.transport.abort()

    async def _scope(self, request: bytes) -> dict[str, Any]:
        """The ASGI scope uvicorn would have built, so the signature check sees the same URL."""
        lines = request.split(b"\r\n")
        try:
            method, target, _version = lines[0].decode("latin-1").split(" ", 2)
        except ValueError:
            raise _BadHandshake(400, "malformed request line") from None
        headers: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(b":")
            if not sep:
                raise _BadHandshake(400, "malformed header line")
            headers.append((name.strip().lower(), value.strip()))
        raw_path, _, query = target.partition("?")
        transport = self.transport
        assert transport is not None
        server = transport.get_extra_info("sockname")
        client = transport.get_extra_info("peername")
        root = self.config.root_path
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": method,
            "scheme": "wss" if transport.get_extra_info("sslcontext") else "ws",
            "server": tuple(server[:2]) if isinstance(server, tuple) else None,
            "client": tuple(client[:2]) if isinstance(client, tuple) else None,
            "root_path": root,
            "path": root + unquote(raw_path),
            "raw_path": (root + raw_path).encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "headers": headers,
            "subprotocols": [],
            "app": self.app,
        }
        if self.config.proxy_headers:
            # uvicorn's own rules for X-Forwarded-Proto/-For from BRIDGE_FORWARDED_ALLOW_IPS.
            async def keep(scope: Any, receive: Any, send: Any) -> None:
                return None

            proxy = ProxyHeadersMiddleware(keep, self.config.forwarded_allow_ips or "127.0.0.1")
            await proxy(cast(Any, scope), cast(Any, None), cast(Any, None))  # it rewrites the scope in place
        return scope

    def _respond(self, status: int, text: str) -> None:
        """Refuse the upgrade with a plain HTTP response, then close."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        body = text.encode()
        head = (f"HTTP/1.1 {status} {_STATUS_TEXT.get(status, 'Error')}\r\ncontent-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n")  # fmt: skip
        if status == 426:
            head += "sec-websocket-version: 13\r\n"
        transport.write(head.encode() + b"\r\n" + body)
        transport.close()

    def _accept(self, key: str) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + accept_key(key).encode() + b"\r\n\r\n"
        )
        self._upgraded = True
        if self._buf:
            self._parse()

    def _write_frame(self, opcode: int, payload: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(bytes((0x80 | opcode, len(payload))) + payload)  # control frames only: <= 125 bytes

    def _send_close(self, code: int, reason: str) -> None:
        self._close_sent = True
        self._write_frame(_OP_CLOSE, code.to_bytes(2, "big") + reason.encode()[:123])
        transport = self.transport
        if transport is None:
            return
        if self._peer_closed or self._parse_stopped:  # done, or nothing more can be read
            transport.close()
        else:
            self._close_timer = self.loop.call_later(CLOSE_TIMEOUT, transport.abort)

    def _violation(self, code: int, reason: str, *, framing: bool = False) -> None:
        """Queue the violation; the session closes the socket with ``code`` when it reaches it. From
        here on only the peer's close frame matters, unless the framing itself is broken (``framing``):
        then nothing more can be read and our close frame ends the connection."""
        self._failing = True
        self._messages.append(ProtocolViolation(code, reason))
        if framing:
            self._parse_stopped = True
            self._buf.clear()

    def _parse(self) -> None:
        buf = self._buf
        n = len(buf)
        pos = 0
        messages = self._messages
        before = len(messages)
        while n - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = pos + 10
            if b0 & 0x70 or not b1 & 0x80:
                self._violation(WS_PROTOCOL_ERROR, "client frames must be masked, with no reserved bit set",
                                framing=True)  # fmt: skip
                break
            end = head + 4 + length
            if length > self._max:  # never buffered: skipped as it arrives
                if not self._failing:
                    self._violation(WS_MESSAGE_TOO_BIG, f"frame larger than {self._max} bytes")
                if end > n:
                    self._skip = end - n
                    pos = n
                    break
                pos = end
                continue
            if end > n:
                break
            payload = apply_mask(buf[head + 4 : end], buf[head : head + 4])
            pos = end
            opcode = b0 & 0x0F
            if opcode == _OP_TEXT and b0 & 0x80 and self._fragments is None and not self._failing:
                # The steady state: one whole text message per frame, taken here when nothing is
                # queued before it (the session's media path), or queued for the session task.
                taker = self._taker
                if taker is not None and not messages:
                    try:
                        if taker(payload):
                            continue
                    except Exception as exc:  # the session task raises it, in order
                        messages.append(exc)
                        continue
                messages.append(payload)
            elif not self._frame(bool(b0 & 0x80), opcode, payload):
                break
        if pos and not self._parse_stopped:
            del buf[:pos]
        if len(messages) != before:
            if len(messages) >= _PAUSE_AT and not self._read_paused and self.transport is not None:
                self._read_paused = True
                self.transport.pause_reading()
            self._wake()

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> bool:
        """Every frame but a whole text message; False once nothing more should be parsed."""
        if self._failing and opcode != _OP_CLOSE:
            return True
        if opcode >= _OP_CLOSE:
            if not fin or len(payload) > 125:
                self._violation(WS_PROTOCOL_ERROR, "control frames must be whole and at most 125 bytes")
                return False
            if opcode == _OP_PING:
                if not self._close_sent:
                    self._write_frame(_OP_PONG, payload)
                return True
            if opcode == _OP_PONG:
                return True
            if opcode != _OP_CLOSE:
                self._violation(WS_PROTOCOL_ERROR, f"unknown opcode {opcode}")
                return False
            return self._peer_close(payload)
        if opcode == _OP_CONT:
            if self._fragments is None:
                self._violation(WS_PROTOCOL_ERROR, "continuation frame without a message to continue")
                return False
            self._fragments.append(payload)
            self._fragment_bytes += len(payload)
            if self._fragment_bytes > self._max:
                self._violation(WS_MESSAGE_TOO_BIG, f"frame larger than {self._max} bytes")
                return False
            if fin:
                self._messages.append(b"".join(self._fragments))
                self._fragments = None
            return True
        if self._fragments is not None:
            self._violation(WS_PROTOCOL_ERROR, "new message before the fragmented one ended")
            return False
        if opcode == _OP_TEXT:
            self._fragments = [payload]  # not fin: the first fragment
            self._fragment_bytes = len(payload)
            return True
        if opcode == _OP_BINARY:
            self._violation(WS_UNSUPPORTED_DATA, "binary frames are not supported")
            return False
        self._violation(WS_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        return False

    def _peer_close(self, payload: bytes) -> bool:
        if len(payload) == 1:
            self._violation(WS_PROTOCOL_ERROR, "close frame with a one-byte body")
            return False
        code = int.from_bytes(payload[:2], "big") if payload else 1005
        self._peer_closed = True
        self._parse_stopped = True
        self._buf.clear()
        self._messages.append(PeerGone(code))
        transport = self.transport
        if self._close_sent:
            if self._close_timer is not None:
                self._close_timer.cancel()
                self._close_timer = None
            if transport is not None:
                transport.close()
        else:  # echo it (RFC 6455 section 5.5.1); the server closes the TCP connection first
            self._close_sent = True
            self._write_frame(_OP_CLOSE, payload[:2])
            if transport is not None:
                transport.close()
        return False


class UpgradeDispatch(asyncio.Protocol):
    """uvicorn's WebSocket protocol for ``bridge serve``: picks the socket's server by its path.

    uvicorn hands over the upgrade request (its head rebuilt in one ``data_received``), then every
    byte after it; this first reads the path, then gives the transport to the protocol that owns it.
    """

    app: ClassVar[Starlette]
    fallback: ClassVar[type[asyncio.Protocol]] = WebSocketsSansIOProtocol

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:  # fmt: skip
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        target = data.split(b" ", 2)[1] if data.count(b" ", 0, 4096) >= 2 else b""
        path = unquote(target.split(b"?", 1)[0].decode("latin-1"))
        root = self.config.root_path
        protocol: asyncio.Protocol
        if path in (MEDIA_PATH, root + MEDIA_PATH):
            protocol = MediaWebSocket(self.app, self.config, self.server_state)
        else:
            protocol = self.fallback(config=self.config, server_state=self.server_state,  # type: ignore[call-arg]
                                     app_state=self.app_state)  # fmt: skip
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        return None


def upgrade_protocol(app: Starlette) -> type[UpgradeDispatch]:
    """The ``ws`` protocol class to give ``uvicorn.Config`` for ``app``."""
    return type("BridgeUpgradeDispatch", (UpgradeDispatch,), {"app": app})


__all__ = ["MEDIA_PATH", "MediaWebSocket", "UpgradeDispatch", "accept_key", "upgrade_protocol"]
