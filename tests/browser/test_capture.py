"""``WS /browser/media`` with a plain WebSocket client: a browser call goes down the Twilio call path,
and every refusal or bad frame closes with its code and reason, ends the call and keeps what it heard."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from bridge.audio import read_wav
from bridge.live import auth
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.store import Keys, RecordingJob, Store, client_from_url
from bridge.testing import ScriptedDeepgramServer, scripted_finals
from tests.support.capture import AUDIO, close_of, open_capture, started, until

SECRET = "capture-secret"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def settings(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer, store: Store
) -> Settings:
    """A bridge on the test's Redis prefix (``store`` deletes its keys afterwards)."""
    return dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, recording_dir=tmp_path,
        recognizer="deepgram", recognizer_url=scripted.url,
    )  # fmt: skip


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[str]:
    async with running_bridge(settings) as (_app, http):
        yield http


async def call_info(http: str, call_sid: str, token: str = "") -> dict[str, object]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=http, headers=headers) as client:
        r = await client.get(f"/calls/{call_sid}")
        return dict(r.json()) if r.status_code == 200 else {}


async def ended(http: str, call_sid: str, token: str = "") -> dict[str, object]:
    async def check() -> dict[str, object]:
        info = await call_info(http, call_sid, token)
        return info if info.get("status") == "ended" else {}

    result: dict[str, object] = await until(check)
    return result


async def send_audio(ws: object, audio: bytes) -> None:
    for i in range(0, len(audio), 160):
        await ws.send(audio[i : i + 160])  # type: ignore[attr-defined]


async def test_a_browser_call_takes_the_twilio_call_path_and_is_labelled(
    bridge: str, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    ws = await open_capture(bridge)
    assert ws.subprotocol == "bridge.capture"
    hello = await started(ws)
    call_sid = hello["call_sid"]
    assert re.fullmatch(r"CA[0-9a-f]{32}", call_sid) and hello["token"] == ""
    await send_audio(ws, AUDIO)
    await ws.send('{"type": "stop"}')
    assert await close_of(ws) == (1000, "stopped")

    info = await ended(bridge, call_sid)
    assert info["extra"]["source"] == "browser" and info["tracks"] == ["inbound"]  # type: ignore[index]
    async with httpx.AsyncClient(base_url=bridge) as client:
        finals = (await client.get(f"/calls/{call_sid}/transcript")).json()
    assert [(f["start"], f["end"], f["text"]) for f in finals] == scripted_finals(AUDIO)
    assert read_wav(tmp_path / f"{call_sid}.wav").data == AUDIO  # the recording: the bytes as sent
    client = client_from_url(redis_url)
    try:
        entries = await client.xrange(Keys(redis_prefix).recordings)
    finally:
        await client.aclose()
    jobs = [RecordingJob.from_fields(f) for _id, f in entries]
    assert [(j.call_sid, j.tracks, j.duration) for j in jobs] == [(call_sid, ["inbound"], len(AUDIO) / 8000)]


async def test_a_page_that_goes_away_ends_its_call_with_its_words(bridge: str) -> None:
    ws = await open_capture(bridge)
    call_sid = (await started(ws))["call_sid"]
    await send_audio(ws, AUDIO[:8000])
    await ws.close()
    info = await ended(bridge, call_sid)
    assert str(info["end_reason"]).startswith("browser closed the socket")
    assert info["finals"] == 1


async def test_without_the_capture_subprotocol_the_socket_is_refused(bridge: str) -> None:
    ws = await open_capture(bridge, protocols=())
    assert await close_of(ws) == (4400, "offer the bridge.capture subprotocol")


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        (b"\xff" * 7, 1007, "audio frames must be whole milliseconds"),
        (b"", 1007, "audio frames must be whole milliseconds"),
        (b"\xff" * 1608, 1009, "audio frame larger than 1600 bytes"),
        ("not json", 1007, "text message is not JSON"),
        ('{"type": "dance"}', 1003, "unsupported message"),
        ('{"type": "stop", "now": true}', 1003, "unsupported message"),
        ("x" * 2000, 1009, "text message larger than 1024 bytes"),
    ],
)
async def test_a_bad_frame_closes_with_its_code_and_reason_and_ends_the_call_with_its_words(
    bridge: str, frame: bytes | str, code: int, reason: str
) -> None:
    ws = await open_capture(bridge)
    call_sid = (await started(ws))["call_sid"]
    await send_audio(ws, AUDIO[:8000])
    await ws.send(frame)
    got_code, got_reason = await close_of(ws)
    assert (got_code, got_reason[: len(reason)]) == (code, reason)
    info = await ended(bridge, call_sid)
    assert str(info["end_reason"]).startswith(str(code)) and info["finals"] == 1
    # The process goes on: the next capture works.
    again = await open_capture(bridge)
    await started(again)
    await again.close()


async def test_call_options_come_from_the_query_and_a_bad_one_is_refused_with_its_reason(
    bridge: str, scripted: ScriptedDeepgramServer
) -> None:
    code, reason = await close_of(await open_capture(bridge, query="?endpointing=5"))
    assert (code, reason.split(":")[0]) == (1007, "invalid stream parameter endpointing")
    ws = await open_capture(bridge, query="?language=es&endpointing=800")
    await started(ws)
    await ws.send('{"type": "stop"}')
    await close_of(ws)
    query = scripted.connections[-1].query
    assert (query["language"], query["endpointing"]) == ("es", "800")


async def test_audio_faster_than_real_time_is_refused(bridge: str) -> None:
    ws = await open_capture(bridge)
    await started(ws)
    for _ in range(30):  # 6 s of audio at once
        await ws.send(b"\xff" * 1600)
    assert await close_of(ws) == (1008, "audio arrives faster than real time")


async def test_a_capture_that_sends_nothing_is_closed_by_the_idle_timeout(settings: Settings) -> None:
    async with running_bridge(dataclasses.replace(settings, media_idle_timeout=0.3)) as (_app, http):
        ws = await open_capture(http)
        call_sid = (await started(ws))["call_sid"]
        assert await close_of(ws) == (1008, "no audio for 0.3 s")
        await ended(http, call_sid)


async def test_the_duration_cap_closes_the_connection_and_ends_the_call_normally(settings: Settings) -> None:
    async with running_bridge(dataclasses.replace(settings, capture_max_seconds=0.6)) as (_app, http):
        ws = await open_capture(http)
        hello = await started(ws)
        assert hello["max_seconds"] == 0.6
        sender = asyncio.create_task(send_realtime(ws))
        code, reason = await close_of(ws)
        sender.cancel()
        assert (code, reason) == (4408, "capture limited to 0.6 s per connection")
        info = await ended(http, hello["call_sid"])
        assert str(info["end_reason"]).startswith("4408")


async def send_realtime(ws: object) -> None:
    """20 ms frames of silence, no faster than real time, until the socket closes."""
    loop = asyncio.get_running_loop()
    began, sent = loop.time(), 0
    try:
        while True:
            await ws.send(b"\xff" * 160)  # type: ignore[attr-defined]
            sent += 1
            await asyncio.sleep(max(0.0, began + sent * 0.02 - loop.time()))
    except Exception:
        return


async def test_captures_from_one_address_are_rate_limited(settings: Settings) -> None:
    async with running_bridge(dataclasses.replace(settings, capture_per_minute=2)) as (_app, http):
        for _ in range(2):
            ws = await open_capture(http)
            await started(ws)
            await ws.send('{"type": "stop"}')
            assert (await close_of(ws))[0] == 1000
        ws = await open_capture(http)
        code, reason = await close_of(ws)
        assert code == 4429 and re.fullmatch(r"too many captures from this address: retry in \d+ s", reason)


async def test_with_a_secret_only_a_capture_token_opens_a_capture(settings: Settings) -> None:
    secured = dataclasses.replace(settings, subscriber_secret=SECRET)
    reader = auth.mint(SECRET, ["*"], 600)
    capture = auth.mint(SECRET, [], 600, scope="capture")
    async with running_bridge(secured) as (_app, http):
        assert await close_of(await open_capture(http)) == (4401, "missing capture token (bridge token --capture)")
        assert await close_of(await open_capture(http, token="v1.bad.token")) == (4401, "bad token signature")
        expired = auth.mint(SECRET, [], -5, scope="capture")
        assert await close_of(await open_capture(http, token=expired)) == (4401, "token expired")
        assert await close_of(await open_capture(http, token=reader)) == (
            4403, "token has no capture scope (bridge token --capture)"
        )  # fmt: skip
        # The token never travels in the URL: one there is not read.
        assert (await close_of(await open_capture(http, query=f"?token={capture}")))[0] == 4401

        ws = await open_capture(http, token=capture)
        assert ws.subprotocol == "bridge.capture"  # never the token
        hello = await started(ws)
        call_sid = hello["call_sid"]
        claims = auth.parse(SECRET, hello["token"])
        assert (claims.calls, claims.scope) == ([call_sid], "subscribe")  # reads its own call, no other
        await send_audio(ws, AUDIO[:8000])
        await ws.send('{"type": "stop"}')
        await close_of(ws)
        assert (await ended(http, call_sid, hello["token"]))["finals"] == 1
        async with httpx.AsyncClient(base_url=http) as client:
            as_capture = await client.get("/calls", headers={"Authorization": f"Bearer {capture}"})
            other = await client.get(f"/calls/CA{'0' * 32}", headers={"Authorization": f"Bearer {hello['token']}"})
        assert (as_capture.status_code, as_capture.json()) == (403, {"error": "a capture token cannot read calls"})
        assert other.status_code == 403


async def test_a_full_instance_refuses_a_new_capture_with_its_reason(settings: Settings) -> None:
    async with running_bridge(dataclasses.replace(settings, max_calls=1)) as (_app, http):
        first = await open_capture(http)
        await started(first)
        code, reason = await close_of(await open_capture(http))
        assert (code, reason) == (1013, "1 calls in progress (BRIDGE_MAX_CALLS=1): try again later")
        await first.send('{"type": "stop"}')
        await close_of(first)


async def test_a_draining_instance_closes_its_captures_with_their_words_kept(
    settings: Settings, scripted: ScriptedDeepgramServer
) -> None:
    async with running_bridge(settings) as (app, http):
        ws = await open_capture(http)
        call_sid = (await started(ws))["call_sid"]
        await send_audio(ws, AUDIO[:8000])
        await scripted.wait_for_audio(8000)
        await app.state.calls.drain(timeout=10)  # what SIGTERM does before the server stops
        with contextlib.suppress(ConnectionClosed):  # frames still in flight may have been refused already
            await ws.send(b"\xff" * 160)
        assert await close_of(ws) == (1001, "bridge shutting down: start again to reach another instance")
        info = await ended(http, call_sid)
        assert info["end_reason"] == "bridge shutdown" and info["finals"] == 1
