"""Lean subscriber clients of ``bridge bench fanout --clients lean``: WebSocket and SSE on raw asyncio
transports, as :mod:`bridge.bench.callsim` does for the calls.

A library client (``websockets``, ``httpx``) costs tens of microseconds of Python per event; a
thousand subscribers at ~24 events a second each would need more CPU in the harness than the bridge
spends sending them, and on a small box the harness, not the bridge, would set the latency. These
clients parse frames (WebSocket: unmasked server frames; SSE: chunked transfer coding and ``data:``
lines) in ``data_received``, stamp arrival there, and decode only the event. WebSocket pings are
answered; a close frame, the end of the response or the call's end finishes the subscriber.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from urllib.parse import urlsplit

from bridge.bench.fanout_clients import Received, record

_MASK = b"\x00\x00\x00\x00"


def _masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (zero mask key, legal and free); control payloads are < 126 bytes."""
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + _MASK + payload


class _Lean(asyncio.Protocol):
    """Shared part: the HTTP response head, then :meth:`body` with everything after it."""

    def __init__(self, rx: Received, ready: asyncio.Event) -> None:
        self.rx = rx
        self.ready = ready
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.buf = bytearray()
        self.headers = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def accepted(self, status_line: bytes) -> bool:
        raise NotImplementedError

    def body(self, now: float) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if not self.headers:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            self.headers, _, rest = self.head.partition(b"\r\n\r\n")
            if not self.accepted(self.headers.split(b"\r\n", 1)[0]):
                self.rx.error = self.headers.split(b"\r\n", 1)[0].decode(errors="replace")
                self.finish()
                return
            self.rx.connected = True
            self.ready.set()
            data = rest
        self.buf += data
        self.body(now)

    def finish(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if not self.rx.error:
                self.rx.error = repr(exc) if exc else "connection closed"
            self.done.set_result(None)
        self.ready.set()


class _LeanWs(_Lean):
    def accepted(self, status_line: bytes) -> bool:
        return status_line.startswith(b"HTTP/1.1 101")

    def body(self, now: float) -> None:
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 2:
            opcode, n = buf[pos] & 0x0F, buf[pos + 1] & 0x7F
            at = pos + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                (n,) = struct.unpack_from("!H", buf, at)
                at += 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                (n,) = struct.unpack_from("!Q", buf, at)
                at += 8
            if len(buf) - at < n:
                break
            payload = bytes(buf[at : at + n])
            pos = at + n
            if opcode == 1 and record(self.rx, payload, now):
                self._close(1000)
                return
            if opcode == 9 and self.transport is not None:
                self.transport.write(_masked(0xA, payload))
            elif opcode == 8:
                code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
                if code != 1000:
                    self.rx.error = f"closed {code} {payload[2:].decode(errors='replace')}"
                self._close(1000)
                return
        del buf[:pos]

    def _close(self, code: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_masked(0x8, struct.pack("!H", code)))
        self.finish()


class _LeanSse(_Lean):
    def __init__(self, rx: Received, ready: asyncio.Event) -> None:
        super().__init__(rx, ready)
        self.text = bytearray()  # de-chunked body not yet split into events

    def accepted(self, status_line: bytes) -> bool:
        return status_line.startswith(b"HTTP/1.1 200")

    def body(self, now: float) -> None:
        if b"transfer-encoding: chunked" in self.headers.lower():
            buf = self.buf
            pos = 0
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                if size == 0:
                    self.finish()
                    return
                if len(buf) < eol + 2 + size + 2:
                    break
                self.text += buf[eol + 2 : eol + 2 + size]
                pos = eol + 2 + size + 2
            del buf[:pos]
        else:
            self.text += self.buf
            self.buf.clear()
        while (end := self.text.find(b"\n\n")) >= 0:
            block = bytes(self.text[:end])
            del self.text[: end + 2]
            for line in block.split(b"\n"):
                if line.startswith(b"data: ") and record(self.rx, line[6:], now):
                    self.finish()
                    return


async def lean_subscriber(url: str, rx: Received, ready: asyncio.Event) -> None:
    """One lean subscriber: ``ws://…/live`` or ``http://…/events``; returns when its stream ends."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    ws = parts.scheme == "ws"
    if ws:
        key = base64.b64encode(os.urandom(16)).decode()
        extra = (f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n")
    else:
        extra = "Accept: text/event-stream\r\n"
    loop = asyncio.get_running_loop()
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: (_LeanWs if ws else _LeanSse)(rx, ready), host, port), 10)
        assert proto.transport is not None
        proto.transport.write(f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode())
        try:
            await asyncio.wait_for(asyncio.shield(ready.wait()), 10)
        except TimeoutError:
            rx.error = "no answer within 10 s"
            proto.finish()
        await proto.done
    except (OSError, TimeoutError) as exc:
        rx.error = repr(exc)
    finally:
        ready.set()
