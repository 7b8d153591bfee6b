"""The subscriber clients of ``bridge bench fanout``: WebSocket and SSE subscribers that stamp the
arrival of every final, connected in batches, and the slow subscriber that never reads.

Connecting a thousand sockets at once is a connect storm (and the bridge's accept backlog and the
harness's file descriptors are finite): :func:`connect_subscribers` opens them ``batch`` at a time,
each batch fully joined (or failed, or timed out) before the next, so the storm is over before the
measurement window opens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
import socket
import struct
import time
from collections.abc import Coroutine, Sequence
from typing import Any

import httpx
import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from bridge import events


class SlowSubscriber(msgspec.Struct):
    dropped: bool
    close_code: int | None
    close_reason: str
    #: Seconds from its connection to the bridge's close frame (None when not dropped).
    seconds_to_drop: float | None


class Received:
    """One subscriber: which call it follows and when each final (track, audio start) first arrived."""

    def __init__(self, kind: str, call: int) -> None:
        self.kind = kind
        #: Index of the call (:attr:`bridge.bench.callsim.SimCall.index`) this subscriber follows.
        self.call = call
        self.finals: dict[tuple[str, float], float] = {}
        #: Finals received again after their first arrival.
        self.duplicates = 0
        self.connected = False
        self.error = ""


def record(rx: Received, raw: str | bytes, now: float) -> bool:
    """Keep a final's arrival time (count a repeat as a duplicate); True once the call has ended."""
    ev = events.decode(raw)
    if isinstance(ev, events.Final):
        key = (ev.track, round(ev.start, 3))
        if key in rx.finals:
            rx.duplicates += 1
        else:
            rx.finals[key] = now
    return isinstance(ev, events.CallEnded)


async def ws_subscriber(url: str, rx: Received, ready: asyncio.Event) -> None:
    try:
        async with connect(url, max_size=2**22, compression=None) as ws:
            rx.connected = True
            ready.set()
            async for raw in ws:
                if record(rx, raw, time.monotonic()):
                    return
    except (ConnectionClosed, InvalidHandshake, OSError, TimeoutError) as exc:
        rx.error = repr(exc)
    finally:
        ready.set()


async def sse_subscriber(client: httpx.AsyncClient, url: str, rx: Received, ready: asyncio.Event) -> None:
    try:
        async with client.stream("GET", url, headers={"accept": "text/event-stream"}) as response:
            if response.status_code != 200:
                rx.error = f"HTTP {response.status_code}"
                return
            rx.connected = True
            ready.set()
            async for line in response.aiter_lines():
                if line.startswith("data: ") and record(rx, line[6:], time.monotonic()):
                    return
    except httpx.HTTPError as exc:
        rx.error = repr(exc)
    finally:
        ready.set()


async def connect_subscribers(
    starts: Sequence[tuple[Received, Coroutine[Any, Any, None], asyncio.Event]],
    *,
    batch: int,
    timeout: float = 30.0,
    pause: float = 0.05,
) -> list[asyncio.Task[None]]:
    """Start the subscribers ``batch`` at a time; each batch joins (or fails, or its ``timeout``
    passes) before the next starts. Returns every subscriber's task (still running)."""
    batch = max(1, batch)
    tasks: list[asyncio.Task[None]] = []
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        tasks += [asyncio.create_task(coro) for _, coro, _ in group]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(ready.wait() for _, _, ready in group)), timeout)
        if i + batch < len(starts):
            await asyncio.sleep(pause)
    return tasks


def raise_fd_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit if ``needed`` descriptors would not
    fit (children started afterwards, such as the bridge, inherit it). Returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and needed > soft and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def slow_connect(port: int, path: str) -> socket.socket:
    """A WebSocket subscriber with a 4 KiB receive buffer that stops reading after the handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("slow subscriber: handshake failed")
        head += chunk
    return sock


def slow_outcome(sock: socket.socket, connected: float) -> SlowSubscriber:
    """Read everything the bridge left in the slow socket and look for its close frame."""
    sock.settimeout(2)
    data = bytearray()
    with contextlib.suppress(OSError):
        while chunk := sock.recv(1 << 20):
            data += chunk
    closed_at = time.monotonic()
    pos = 0
    while pos + 2 <= len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        body = bytes(data[pos : pos + n])
        pos += n
        if opcode == 8 and len(body) >= 2:
            code = struct.unpack_from("!H", body)[0]
            return SlowSubscriber(dropped=code == 4008, close_code=code, close_reason=body[2:].decode(errors="replace"),
                                  seconds_to_drop=round(closed_at - connected, 1) if code == 4008 else None)
    return SlowSubscriber(dropped=False, close_code=None, close_reason="", seconds_to_drop=None)
