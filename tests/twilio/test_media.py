"""The Media Streams state machine, pure and over a real socket (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.settings import Settings
from bridge.twilio import models as tm
from bridge.twilio.auth import sign
from bridge.twilio.media import (
    MediaFrame,
    ProtocolViolation,
    StreamProtocol,
    StreamRejected,
    StreamState,
)
from tests.twilio.conftest import (
    AUTH_TOKEN,
    CALL_SID,
    STREAM_SID,
    Bridge,
    RecordingOpener,
    fixture_text,
    make_app,
    serve,
)

pytestmark = pytest.mark.usefixtures("media_transport")

CONNECTED = fixture_text("connected.json")
START_BOTH = fixture_text("start_both.json")
START_INBOUND = fixture_text("start_inbound.json")
MEDIA_IN = fixture_text("media_inbound.json")
MEDIA_OUT = fixture_text("media_outbound.json")
DTMF = fixture_text("dtmf.json")
MARK = fixture_text("mark.json")
STOP = fixture_text("stop.json")


def _edit(text: str, **changes: Any) -> str:
    """A fixture frame with some nested fields replaced (``media__payload="..."``)."""
    raw = json.loads(text)
    for key, value in changes.items():
        node = raw
        *path, last = key.split("__")
        for part in path:
            node = node[part]
        node[last] = value
    return json.dumps(raw, ensure_ascii=False)


# ------------------------------------------------------------------------------------------
# pure state machine


def _state(p: StreamProtocol) -> StreamState:
    return p.state


def test_happy_path_states_and_events() -> None:
    p = StreamProtocol()
    assert _state(p) is StreamState.AWAIT_CONNECTED
    assert isinstance(p.receive(CONNECTED), tm.Connected)
    assert _state(p) is StreamState.AWAIT_START
    start = p.receive(START_BOTH)
    assert isinstance(start, tm.Start) and _state(p) is StreamState.STREAMING and p.call_sid == CALL_SID
    frame = p.receive(MEDIA_IN)
    assert isinstance(frame, MediaFrame)
    assert frame.track == "inbound" and frame.timestamp_ms == 5 and len(frame.payload) == 160
    assert isinstance(p.receive(MEDIA_OUT), MediaFrame)
    assert isinstance(p.receive(DTMF), tm.Dtmf)
    assert isinstance(p.receive(MARK), tm.Mark)
    assert isinstance(p.receive(STOP), tm.Stop)
    assert _state(p) is StreamState.STOPPED


BAD_SEQUENCES: list[tuple[str, list[str], int, str]] = [
    ("bad json", [CONNECTED, START_BOTH, "{nope"], 1007, "invalid message"),
    ("bad base64", [CONNECTED, START_BOTH, _edit(MEDIA_IN, media__payload="***not base64***")], 1007, "payload"),
    ("bad timestamp", [CONNECTED, START_BOTH, _edit(MEDIA_IN, media__timestamp="soon")], 1007, "timestamp"),
    ("start first", [START_BOTH], 1008, "expected 'connected' first"),
    ("media before start", [CONNECTED, MEDIA_IN], 1008, "unexpected 'media': expected 'start'"),
    ("dtmf before start", [CONNECTED, DTMF], 1008, "unexpected 'dtmf'"),
    ("mark before start", [CONNECTED, MARK], 1008, "unexpected 'mark'"),
    ("second start", [CONNECTED, START_BOTH, START_BOTH], 1008, "stream already started"),
    ("second connected", [CONNECTED, CONNECTED], 1008, "unexpected 'connected'"),
    ("media after stop", [CONNECTED, START_BOTH, STOP, MEDIA_IN], 1008, "stream already stopped"),
    ("unknown event", [CONNECTED, START_BOTH, '{"event":"hello"}'], 1003, "unknown event 'hello'"),
    (
        "stop for another call",
        [CONNECTED, START_BOTH, _edit(STOP, stop__callSid="CA" + "0" * 32)],
        1008,
        "stop for another call",
    ),
    ("other stream", [CONNECTED, START_BOTH, _edit(MEDIA_IN, streamSid="MZ" + "0" * 32)], 1008, "streamSid"),
    (
        "unannounced track",
        [CONNECTED, _edit(START_BOTH, start__tracks=["inbound"]), MEDIA_OUT],
        1008,
        "track 'outbound' not in start",
    ),
    ("oversized", [CONNECTED, START_BOTH, _edit(MEDIA_IN, media__payload="A" * 70_000)], 1009, "larger than"),
    ("not mulaw", [CONNECTED, _edit(START_BOTH, start__mediaFormat__encoding="audio/l16")], 1003, "mulaw"),
]


@pytest.mark.parametrize(
    ("frames", "code", "reason"), [c[1:] for c in BAD_SEQUENCES], ids=[c[0] for c in BAD_SEQUENCES]
)
def test_violations_pure(frames: list[str], code: int, reason: str) -> None:
    p = StreamProtocol(max_frame_bytes=64 * 1024)
    with pytest.raises(ProtocolViolation) as info:
        for frame in frames:
            p.receive(frame)
    assert info.value.code == code
    assert reason in info.value.reason


def test_multibyte_frames_are_measured_in_bytes() -> None:
    p = StreamProtocol(max_frame_bytes=1000)
    p.receive(CONNECTED)
    p.receive(START_BOTH)
    frame = _edit(MARK, mark__name="é" * 480)
    assert len(frame) < 1000 < len(frame.encode())
    with pytest.raises(ProtocolViolation) as info:
        p.receive(frame)
    assert info.value.code == 1009


# ------------------------------------------------------------------------------------------
# over a real socket


def _signed(bridge: Bridge, path: str = "/twilio/media") -> dict[str, str]:
    return {"x-twilio-signature": sign(AUTH_TOKEN, bridge.ws + path)}


async def _open(bridge: Bridge) -> ClientConnection:
    return await connect(bridge.ws + "/twilio/media", additional_headers=_signed(bridge), open_timeout=5)


async def _close_info(ws: ClientConnection) -> tuple[int | None, str | None]:
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), timeout=5)
    return ws.close_code, ws.close_reason


async def test_full_stream_reaches_the_handler(bridge: Bridge) -> None:
    async with await _open(bridge) as ws:
        for frame in (CONNECTED, START_BOTH, MEDIA_OUT, MEDIA_IN, DTMF, MARK, STOP):
            await ws.send(frame)
        code, reason = await _close_info(ws)
    assert (code, reason) == (1000, "stream stopped")
    [start] = bridge.calls.starts
    assert start.start.stream_sid == STREAM_SID
    handler = bridge.calls.handlers[0]
    payload_in = base64.b64decode(json.loads(MEDIA_IN)["media"]["payload"])
    payload_out = base64.b64decode(json.loads(MEDIA_OUT)["media"]["payload"])
    assert handler.events == [
        ("media", "outbound", 5, payload_out),
        ("media", "inbound", 5, payload_in),
        ("dtmf", "1"),
        ("mark", "my label"),
        ("stop", True, "twilio stop"),
    ]


# Over a socket the bridge closes right after ``stop``, so nothing can follow it.
SOCKET_CASES = [c for c in BAD_SEQUENCES if c[0] != "media after stop"]


@pytest.mark.parametrize(("frames", "code", "reason"), [c[1:] for c in SOCKET_CASES], ids=[c[0] for c in SOCKET_CASES])
async def test_violations_close_the_socket(
    bridge: Bridge, frames: list[str], code: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.media_stream")
    async with await _open(bridge) as ws:
        for frame in frames:
            await ws.send(frame)
        got_code, got_reason = await _close_info(ws)
    assert got_code == code
    assert got_reason is not None and reason in got_reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "a violation must be logged"
    if bridge.calls.handlers:
        assert getattr(warnings[-1], "call_sid", None) == CALL_SID
        # the opened handler hears about the abnormal end exactly once
        [handler] = bridge.calls.handlers
        stops = [e for e in handler.events if e[0] == "stop"]
        assert stops == [("stop", False, f"{code} {got_reason}")]


async def test_binary_frame_is_unsupported(bridge: Bridge) -> None:
    async with await _open(bridge) as ws:
        await ws.send(CONNECTED)
        await ws.send(b"\x00\x01\x02")
        code, reason = await _close_info(ws)
    assert code == 1003 and reason == "binary frames are not supported"


async def test_peer_drop_is_an_unclean_stop(bridge: Bridge) -> None:
    async with await _open(bridge) as ws:
        for frame in (CONNECTED, START_BOTH, MEDIA_IN):
            await ws.send(frame)
        await asyncio.wait_for(bridge.calls.opened.wait(), timeout=5)
    handler = bridge.calls.handlers[0]
    await asyncio.wait_for(handler.stopped.wait(), timeout=5)
    assert handler.events[-1][0] == "stop" and handler.events[-1][1] is False
    assert "socket closed by peer" in handler.events[-1][2]


async def test_opener_can_reject_the_stream(settings: Settings) -> None:
    opener = RecordingOpener(reject=StreamRejected(4404, "unknown call"))
    async with serve(make_app(settings, opener)) as bridge, await _open(bridge) as ws:
        await ws.send(CONNECTED)
        await ws.send(START_BOTH)
        code, reason = await _close_info(ws)
    assert (code, reason) == (4404, "unknown call")


async def test_handler_crash_is_contained(settings: Settings) -> None:
    class Boom(RecordingOpener):
        async def open_stream(self, start: tm.Start) -> Any:
            raise RuntimeError("session bug")

    async with serve(make_app(settings, Boom())) as bridge, await _open(bridge) as ws:
        await ws.send(CONNECTED)
        await ws.send(START_BOTH)
        code, reason = await _close_info(ws)
    assert (code, reason) == (1011, "internal error")


async def test_bad_stream_token_is_refused(bridge: Bridge) -> None:
    async with await _open(bridge) as ws:
        await ws.send(CONNECTED)
        await ws.send(_edit(START_BOTH, start__customParameters__token="forged"))
        code, reason = await _close_info(ws)
    assert (code, reason) == (1008, "missing or invalid stream token")
    assert bridge.calls.starts == []


async def test_missing_stream_token_is_refused(bridge: Bridge) -> None:
    async with await _open(bridge) as ws:
        await ws.send(CONNECTED)
        await ws.send(START_INBOUND)
        code, _ = await _close_info(ws)
    assert code == 1008


async def test_token_not_needed_when_checks_are_off(settings: Settings) -> None:
    insecure = dataclasses.replace(settings, insecure_skip_signature=True)
    async with serve(make_app(insecure)) as bridge:
        async with connect(bridge.ws + "/twilio/media", open_timeout=5) as ws:
            for frame in (CONNECTED, START_INBOUND, MEDIA_IN, STOP):
                await ws.send(frame)
            code, _ = await _close_info(ws)
        assert code == 1000
        assert bridge.calls.handlers[0].events[-1] == ("stop", True, "twilio stop")


async def test_unsigned_upgrade_gets_403(bridge: Bridge) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(bridge.ws + "/twilio/media", open_timeout=5)
    assert info.value.response.status_code == 403
