"""The media socket's own RFC 6455 server (:mod:`bridge.twilio.rawsocket`), byte by byte.

``test_media.py`` runs the Media Streams protocol over both servers; these are the WebSocket
details only this one owns: the handshake, framing, ping, fragments, back-pressure, shutdown, and
that every other WebSocket path still reaches uvicorn's own protocol.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct

import pytest
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bridge.settings import Settings
from bridge.twilio.auth import sign
from bridge.twilio.rawsocket import accept_key
from tests.twilio.conftest import (
    AUTH_TOKEN,
    Bridge,
    RecordingHandler,
    RecordingOpener,
    fixture_text,
    make_app,
    serve,
)

CONNECTED = fixture_text("connected.json")
START_BOTH = fixture_text("start_both.json")
MEDIA_IN = fixture_text("media_inbound.json")
STOP = fixture_text("stop.json")


def test_accept_key_is_rfc_6455s_example() -> None:
    # RFC 6455 section 1.3.
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, rsv: int = 0) -> bytes:
    """One client frame, built by hand so the tests can also build wrong ones."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read_frame(self) -> tuple[int, bytes]:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        assert not b1 & 0x80, "server frames are never masked"
        return b0 & 0x0F, await self.reader.readexactly(n)

    async def read_close(self) -> tuple[int, str]:
        while True:
            opcode, payload = await asyncio.wait_for(self.read_frame(), 5)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()


async def open_raw(bridge: Bridge, *, version: str = "13", signed: bool = True) -> tuple[int, bytes, RawClient]:
    reader, writer = await asyncio.open_connection(bridge.host, bridge.port)
    key = base64.b64encode(os.urandom(16)).decode()
    headers = [
        "GET /twilio/media HTTP/1.1",
        f"Host: {bridge.host}:{bridge.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        f"Sec-WebSocket-Version: {version}",
    ]
    if signed:
        headers.append(f"X-Twilio-Signature: {sign(AUTH_TOKEN, bridge.ws + '/twilio/media')}")
    writer.write(("\r\n".join(headers) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    if status == 101:
        assert f"sec-websocket-accept: {accept_key(key)}\r\n".encode() in head
    return status, head, RawClient(reader, writer)


async def test_handshake_refusals_are_http_statuses(bridge: Bridge) -> None:
    status, head, client = await open_raw(bridge, version="8")
    assert status == 426 and b"sec-websocket-version: 13" in head.lower()
    client.writer.close()
    status, _, client = await open_raw(bridge, signed=False)
    assert status == 403
    client.writer.close()


async def test_a_whole_stream_in_one_write_arrives_in_order(bridge: Bridge) -> None:
    """Frames coalesced into one TCP segment are all parsed from one read, in order."""
    status, _, client = await open_raw(bridge)
    assert status == 101
    media = [MEDIA_IN.replace('"timestamp":"5"', f'"timestamp":"{5 + 20 * i}"') for i in range(200)]
    messages = [CONNECTED, START_BOTH, *media, STOP]
    client.writer.write(b"".join(frame(0x1, m.encode()) for m in messages))
    assert await client.read_close() == (1000, "stream stopped")
    [handler] = bridge.calls.handlers
    assert [t for t, _ in handler.media("inbound")] == [5 + 20 * i for i in range(200)]
    client.writer.close()


async def test_ping_is_answered_and_fragments_are_joined(bridge: Bridge) -> None:
    status, _, client = await open_raw(bridge)
    assert status == 101
    client.writer.write(frame(0x9, b"probe"))
    assert await asyncio.wait_for(client.read_frame(), 5) == (0xA, b"probe")
    text = CONNECTED.encode()
    client.writer.write(frame(0x1, text[:7], fin=False) + frame(0x9, b"mid") + frame(0x0, text[7:20], fin=False)
                        + frame(0x0, text[20:]))  # fmt: skip
    assert await asyncio.wait_for(client.read_frame(), 5) == (0xA, b"mid")
    client.writer.write(frame(0x1, START_BOTH.encode()))
    await asyncio.wait_for(bridge.calls.opened.wait(), 5)  # "connected" was whole, or start would be refused
    client.writer.write(frame(0x8, struct.pack("!H", 1000)))
    assert await client.read_close() == (1000, "")
    [handler] = bridge.calls.handlers
    await asyncio.wait_for(handler.stopped.wait(), 5)
    assert handler.events[-1] == ("stop", False, "socket closed by peer (1000)")


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(0x1, CONNECTED.encode(), masked=False), 1002),
        (frame(0x1, CONNECTED.encode(), rsv=0x40), 1002),
        (frame(0x0, b"orphan continuation"), 1002),
        (frame(0x3, b"reserved opcode"), 1002),
        (frame(0x9, b"x" * 126), 1002),
        (frame(0x2, b"\x00\x01"), 1003),
        (frame(0x1, b'{"event": "connected", "protocol": "Call", "version": "1.0.0\xff"}'), 1007),
    ],
    ids=["unmasked", "reserved-bit", "orphan-continuation", "unknown-opcode", "long-ping", "binary", "bad-utf8"],
)
async def test_bad_frames_close_with_their_code(bridge: Bridge, bad: bytes, code: int) -> None:
    status, _, client = await open_raw(bridge)
    assert status == 101
    client.writer.write(bad)
    got, _ = await client.read_close()
    assert got == code
    client.writer.write(frame(0x8, struct.pack("!H", got)))  # a client answers the close...
    assert await asyncio.wait_for(client.reader.read(), 5) == b""  # ...and the server ends the connection
    client.writer.close()


async def test_an_oversized_frame_is_skipped_not_buffered_and_the_close_completes(bridge: Bridge) -> None:
    status, _, client = await open_raw(bridge)
    assert status == 101
    client.writer.write(frame(0x1, b"x" * (3 * 64 * 1024)))
    assert (await client.read_close())[0] == 1009
    client.writer.write(frame(0x8, struct.pack("!H", 1009)))  # our answer to its close
    assert await asyncio.wait_for(client.reader.read(), 5) == b""
    client.writer.close()


async def test_a_slow_call_layer_pushes_back_and_loses_nothing(settings: Settings) -> None:
    """More frames queued than the pause mark: reading stops, then resumes; every frame arrives."""

    class Slow(RecordingHandler):
        async def on_media(self, track: str, timestamp_ms: int, payload: bytes) -> None:
            if timestamp_ms % 400 == 5:
                await asyncio.sleep(0.01)
            await super().on_media(track, timestamp_ms, payload)

    class SlowOpener(RecordingOpener):
        async def open_stream(self, start: object) -> Slow:
            handler = Slow()
            self.starts.append(start)  # type: ignore[arg-type]
            self.handlers.append(handler)
            self.opened.set()
            return handler

    async with serve(make_app(settings, SlowOpener())) as bridge:
        status, _, client = await open_raw(bridge)
        assert status == 101
        count = 3000
        media = [MEDIA_IN.replace('"timestamp":"5"', f'"timestamp":"{5 + 20 * i}"') for i in range(count)]
        client.writer.write(b"".join(frame(0x1, m.encode()) for m in [CONNECTED, START_BOTH, *media, STOP]))
        await client.writer.drain()
        assert await asyncio.wait_for(client.read_close(), 20) == (1000, "stream stopped")
        [handler] = bridge.calls.handlers
        assert [t for t, _ in handler.media("inbound")] == [5 + 20 * i for i in range(count)]
        client.writer.close()


async def test_other_websocket_paths_stay_on_uvicorns_protocol(settings: Settings) -> None:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    app = make_app(settings)
    app.router.routes.append(WebSocketRoute("/echo", echo))
    async with serve(app) as bridge, connect(bridge.ws + "/echo", open_timeout=5) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"


async def test_server_shutdown_closes_open_streams_1012(settings: Settings) -> None:
    async with serve(make_app(settings)) as bridge:
        async with connect(bridge.ws + "/twilio/media", open_timeout=5,
                           additional_headers={"x-twilio-signature": sign(AUTH_TOKEN, bridge.ws + "/twilio/media")}
                           ) as ws:  # fmt: skip
            await ws.send(CONNECTED)
            await ws.send(START_BOTH)
            await asyncio.wait_for(bridge.calls.opened.wait(), 5)
            bridge.app.state.uvicorn_server.should_exit = True  # uvicorn calls shutdown() on each connection
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1012
        [handler] = bridge.calls.handlers
        await asyncio.wait_for(handler.stopped.wait(), 5)
        assert handler.events[-1][:2] == ("stop", False)


class ImmediateHandler(RecordingHandler):
    """Takes media frames in the socket's read callback too (as the call layer does)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.taken_now = 0

    def on_media_nowait(self, track: str, timestamp_ms: int, payload: bytes) -> None:
        if timestamp_ms == self.fail_at:
            raise RuntimeError("a bug in the call layer")
        self.taken_now += 1
        self.events.append(("media", track, timestamp_ms, payload))


class ImmediateOpener(RecordingOpener):
    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at

    async def open_stream(self, start: object) -> ImmediateHandler:
        handler = ImmediateHandler(self.fail_at)
        self.starts.append(start)  # type: ignore[arg-type]
        self.handlers.append(handler)
        self.opened.set()
        return handler


def _media(timestamp: int, payload: str | None = None) -> str:
    text = MEDIA_IN.replace('"timestamp":"5"', f'"timestamp":"{timestamp}"')
    if payload is not None:
        start = text.index('"payload":"') + len('"payload":"')
        text = text[:start] + payload + text[text.index('"', start) :]
    return text


DTMF = fixture_text("dtmf.json")
MARK = fixture_text("mark.json")


async def _streaming(bridge: Bridge) -> RawClient:
    """A media socket past ``start``, its handler open: what follows is the steady state."""
    status, _, client = await open_raw(bridge)
    assert status == 101
    client.writer.write(b"".join(frame(0x1, m.encode()) for m in [CONNECTED, START_BOTH]))
    await asyncio.wait_for(bridge.calls.opened.wait(), 5)
    await asyncio.sleep(0.05)
    return client


async def test_media_taken_in_the_read_callback_keeps_its_order_with_everything_else(settings: Settings) -> None:
    async with serve(make_app(settings, ImmediateOpener())) as bridge:
        client = await _streaming(bridge)
        script = [_media(20 * i) for i in range(1, 4)] + [DTMF] + [_media(20 * i) for i in range(4, 6)] + [MARK]
        script += [_media(20 * i) for i in range(6, 40)]
        for i in range(0, len(script), 3):  # a few messages per read, as TCP delivers them
            client.writer.write(b"".join(frame(0x1, m.encode()) for m in script[i : i + 3]))
            await asyncio.sleep(0.005)
        client.writer.write(frame(0x1, STOP.encode()))
        assert await asyncio.wait_for(client.read_close(), 5) == (1000, "stream stopped")
        [handler] = bridge.calls.handlers
        kinds = [e[0] if e[0] != "media" else e[2] for e in handler.events]
        assert kinds == [20, 40, 60, "dtmf", 80, 100, "mark", *range(120, 800, 20), "stop"]
        assert handler.taken_now >= 30  # the steady state: most frames never wait for the session task
        client.writer.close()


async def test_a_bad_frame_after_good_ones_taken_at_once_closes_in_order(settings: Settings) -> None:
    async with serve(make_app(settings, ImmediateOpener())) as bridge:
        client = await _streaming(bridge)
        script = [_media(20), _media(40), _media(60), _media(80, payload="not base64!"), _media(100)]
        client.writer.write(b"".join(frame(0x1, m.encode()) for m in script))
        assert (await client.read_close())[0] == 1007
        [handler] = bridge.calls.handlers
        await asyncio.wait_for(handler.stopped.wait(), 5)
        assert [t for t, _ in handler.media("inbound")] == [20, 40, 60]
        assert handler.taken_now == 3 and handler.events[-1][:2] == ("stop", False)
        client.writer.close()


async def test_a_call_layer_bug_in_the_read_callback_closes_1011_and_the_server_lives_on(settings: Settings) -> None:
    async with serve(make_app(settings, ImmediateOpener(fail_at=60))) as bridge:
        client = await _streaming(bridge)
        client.writer.write(b"".join(frame(0x1, _media(20 * i).encode()) for i in range(1, 6)))
        assert await client.read_close() == (1011, "internal error")
        [handler] = bridge.calls.handlers
        await asyncio.wait_for(handler.stopped.wait(), 5)
        assert [t for t, _ in handler.media("inbound")] == [20, 40]
        client.writer.close()
        status, _, again = await open_raw(bridge)  # the next call is served as before
        assert status == 101
        again.writer.close()
