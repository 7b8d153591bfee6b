"""Cheap simulated Twilio calls for load: many signed two-leg Media Streams from one process.

Each call is a minimal RFC 6455 client on a raw asyncio transport: the frames are byte-for-byte
the JSON text frames Twilio sends (``connected``, ``start``, then one ``media`` per track every
20 ms, ``stop``), masked with an all-zero key (legal, and no per-byte work), and both tracks'
frames of a tick go out in one write. A full WebSocket library would cost more CPU per frame than
the bridge itself and make the harness, not the bridge, the bottleneck on a small box.
Every media payload is a probe frame (:func:`~bridge.bench.null_recognizer.probe_frame`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import struct
import time
from urllib.parse import urlsplit

from bridge.bench.null_recognizer import probe_frame
from bridge.twilio import models as tm
from bridge.twilio.auth import SIGNATURE_HEADER, sign, stream_token

_MASK = b"\x00\x00\x00\x00"


def ws_text_frame(text: str) -> bytes:
    """One masked (zero key) WebSocket text frame, as a client must send it."""
    data = text.encode()
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + _MASK + data


def ws_close_frame(code: int = 1000) -> bytes:
    return struct.pack("!BB", 0x88, 0x80 | 2) + _MASK + struct.pack("!H", code)


class _Reader(asyncio.Protocol):
    """Reads the handshake answer, then discards what the bridge sends until it closes."""

    def __init__(self) -> None:
        self.handshake: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._head = b""
        self.close_frames = 0

    def data_received(self, data: bytes) -> None:
        if not self.handshake.done():
            self._head += data
            if b"\r\n\r\n" in self._head:
                head, _, rest = self._head.partition(b"\r\n\r\n")
                self.handshake.set_result(head)
                data = rest
            else:
                return
        if data[:1] == b"\x88":
            self.close_frames += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("connection lost during handshake"))
        if not self.closed.done():
            self.closed.set_result(None)


class SimCall:
    """One simulated two-leg (or one-leg) Twilio call."""

    def __init__(self, index: int, url: str, auth_token: str, tracks: tuple[str, ...] = ("inbound", "outbound")):
        self.index = index
        self.url = url
        self.auth_token = auth_token
        self.tracks = tracks
        self.call_sid = "CA" + secrets.token_hex(16)
        self.stream_sid = "MZ" + secrets.token_hex(16)
        self.account_sid = "AC" + "0" * 32
        self.seq = 0
        self.chunk = 0
        self.sent = 0  # media frames sent, all tracks
        self.failed = ""
        self._transport: asyncio.Transport | None = None
        self._reader: _Reader | None = None
        # The media JSON around the payload, pre-split so a tick only formats numbers and base64.
        self._pre = ('{"event":"media","sequenceNumber":"%d","streamSid":"' + self.stream_sid
                     + '","media":{"track":"%s","chunk":"%d","timestamp":"%d","payload":"')
        self._track_codes = {t: i for i, t in enumerate(("inbound", "outbound"))}

    @property
    def alive(self) -> bool:
        return self._transport is not None and not self._transport.is_closing() and not self.failed

    async def open(self) -> None:
        parts = urlsplit(self.url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        loop = asyncio.get_running_loop()
        transport, reader = await loop.create_connection(_Reader, host, port)
        self._transport, self._reader = transport, reader
        key = base64.b64encode(os.urandom(16)).decode()
        headers = [
            f"GET {parts.path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        ]
        if self.auth_token:
            headers.append(f"{SIGNATURE_HEADER}: {sign(self.auth_token, self.url)}")
        transport.write(("\r\n".join(headers) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.handshake, 10)
        if not head.startswith(b"HTTP/1.1 101"):
            transport.close()
            raise ConnectionError(f"bridge refused the stream: {head.splitlines()[0].decode(errors='replace')}")
        params = {"CallSid": self.call_sid}
        if self.auth_token:
            params["token"] = stream_token(self.auth_token, self.call_sid)
        start = tm.Start(
            sequence_number=self._next(),
            stream_sid=self.stream_sid,
            start=tm.StartInfo(
                account_sid=self.account_sid, stream_sid=self.stream_sid, call_sid=self.call_sid,
                tracks=list(self.tracks),  # type: ignore[arg-type]
                media_format=tm.MediaFormat(), custom_parameters=params,
            ),
        )
        transport.write(ws_text_frame(tm.encode(tm.Connected()).decode()) + ws_text_frame(tm.encode(start).decode()))

    def _next(self) -> str:
        self.seq += 1
        return str(self.seq)

    def tick(self) -> None:
        """Send the next 20 ms of every track (one write), each payload stamped with the send time."""
        transport = self._transport
        if transport is None or transport.is_closing():
            if not self.failed:
                self.failed = "bridge closed the stream"
            return
        chunk = self.chunk
        self.chunk = chunk + 1
        out = []
        now = time.monotonic()
        for track in self.tracks:
            self.seq += 1
            payload = base64.b64encode(probe_frame(self.index, self._track_codes[track], chunk + 1, now)).decode()
            text = self._pre % (self.seq, track, chunk + 1, chunk * 20) + payload + '"}}'
            out.append(ws_text_frame(text))
        transport.write(b"".join(out))
        self.sent += len(self.tracks)

    async def stop(self, timeout: float = 10.0) -> None:
        """Twilio ``stop``, then a close frame; wait (bounded) for the bridge to close."""
        transport, reader = self._transport, self._reader
        if transport is None or reader is None:
            return
        if not transport.is_closing():
            stop = tm.Stop(
                sequence_number=self._next(),
                stream_sid=self.stream_sid,
                stop=tm.StopInfo(account_sid=self.account_sid, call_sid=self.call_sid),
            )
            transport.write(ws_text_frame(tm.encode(stop).decode()) + ws_close_frame())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader.closed), timeout)
        transport.close()


async def run_calls(calls: list[SimCall], seconds: float, *, slots: int = 10) -> float:
    """Pace ``calls`` at real time for ``seconds``; returns the worst tick lateness in seconds.

    Calls are spread over ``slots`` phases of the 20 ms period (real calls are not phase-aligned).
    """
    period = 0.02
    loop = asyncio.get_running_loop()
    groups = [calls[i::slots] for i in range(slots)]
    t0 = loop.time()
    ticks = round(seconds / period)
    worst = 0.0
    for k in range(ticks):
        for g, group in enumerate(groups):
            due = t0 + k * period + g * period / slots
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                worst = max(worst, -delay)
            for call in group:
                call.tick()
    return worst
