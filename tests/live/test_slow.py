"""A subscriber that stops reading is dropped; the others and the call are not slowed."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct

import pytest
from websockets.asyncio.client import connect

from bridge import events
from bridge.live.hub import Hub, SubscriberTooSlow
from bridge.settings import Settings
from bridge.store import Store
from tests.support import eventually
from tests.support.served import Serve

CALL = "CA" + "0" * 28 + "51a0"  # "slow"


def partial(i: int, size: int = 10) -> events.Partial:
    return events.Partial(call_sid=CALL, track="inbound", start=i, end=i + 0.5, text="x" * size)


async def test_hub_drops_the_subscriber_whose_queue_overflows(store: Store) -> None:
    await store.call_started(CALL, stream_sid="MZ", tracks=["inbound"], started_at=1.0)
    dropped: list[str] = []
    hub = Hub(store, Settings(subscriber_queue=5), on_drop=dropped.append)
    await hub.start()
    try:
        async with hub.subscribe(CALL) as fast, hub.subscribe(CALL) as slow:
            fast_events = aiter(fast)
            for i in range(12):
                await store.publish(partial(i))
                got = await anext(fast_events)  # the fast one keeps up
                assert isinstance(got, events.Partial) and got.start == i
            with pytest.raises(SubscriberTooSlow):
                async with asyncio.timeout(5):
                    async for _ in slow:
                        pass
            assert hub.dropped_total == 1 and dropped == [CALL]
            assert hub.subscriber_count == 1
    finally:
        await hub.stop()


def raw_ws_connect(host: str, port: int, path: str) -> socket.socket:
    """A WebSocket client with a tiny receive buffer that never reads after the handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect((host, port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_close_code(sock: socket.socket) -> int | None:
    """Read frames until the server's close frame (its code) or EOF (None)."""
    buf = b""
    while True:
        while len(buf) >= 2:
            opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buf) < 4:
                    break
                length, offset = struct.unpack("!H", buf[2:4])[0], 4
            elif length == 127:
                if len(buf) < 10:
                    break
                length, offset = struct.unpack("!Q", buf[2:10])[0], 10
            if len(buf) < offset + length:
                break
            payload, buf = buf[offset : offset + length], buf[offset + length :]
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0])
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk


async def test_ws_subscriber_that_stops_reading_is_closed(store: Store, served: Serve) -> None:
    await store.call_started(CALL, stream_sid="MZ", tracks=["inbound"], started_at=1.0)
    async with served(subscriber_queue=16) as srv:
        host, port = srv.base.split(":")
        slow = await asyncio.to_thread(raw_ws_connect, host, int(port), f"/calls/{CALL}/live")
        try:
            async with connect(f"{srv.ws}/calls/{CALL}/live", max_size=None) as fast:
                await asyncio.sleep(0)
                async with asyncio.timeout(30):
                    await eventually(lambda: srv.hub.subscriber_count == 2)
                    sent = 0
                    # Paced so the fast subscriber never has more than a few events in flight.
                    while srv.hub.dropped_total == 0:
                        for _ in range(4):
                            await store.publish(partial(sent, size=32_000))
                            sent += 1
                        for _ in range(4):
                            await fast.recv()
                    # The fast subscriber is still served after the slow one is gone.
                    await store.add_final(events.Final(
                        call_sid=CALL, id="inbound-1", track="inbound", start=1, end=2, text="still here"))  # fmt: skip
                    while True:
                        event = events.decode(await fast.recv())
                        if isinstance(event, events.Final):
                            assert event.text == "still here"
                            break
            assert srv.hub.dropped_total == 1
            code = await asyncio.to_thread(read_close_code, slow)
            assert code in (4008, None), code  # close frame, or the connection was cut if it could not be sent
        finally:
            slow.close()
