"""Hostile input against a running ``bridge serve`` with signatures on (issue #10, items 3, 6, 7, 10, 11, 13).

Each test names the bug it pins: what got through before, and what the bridge answers now. Nothing
here may crash the process, leave a call registered, write outside the recording directory, touch a
Redis key it should not, or forge a log line.
"""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import websockets

from bridge.live import auth as live_auth
from bridge.store import client_from_url
from bridge.store.keys import Keys
from bridge.testing import ScriptedDeepgramServer
from bridge.twilio import models as tm
from bridge.twilio.auth import SIGNATURE_HEADER, sign, stream_token
from tests.support.bridges import TWILIO_TOKEN, BridgeProcess, bridge_env

TOKEN = TWILIO_TOKEN
SECRET = "subscriber-secret"
ACCOUNT = "AC" + "3f" * 16
CALL = "CA" + "7c" * 16
AUDIO = base64.b64encode(bytes(range(1, 161))).decode()




async def _start_with(ws_base: str, call_sid: str) -> tuple[int | None, str]:
    """A signed media socket whose ``start`` carries ``call_sid`` (and a valid token for it)."""
    url = f"{ws_base}/twilio/media"
    stream_sid = "MZ" + secrets.token_hex(16)
    async with websockets.connect(url, additional_headers={SIGNATURE_HEADER: sign(TOKEN, url)}) as ws:
        await ws.send(tm.encode(tm.Connected()).decode())
        info = tm.StartInfo(account_sid=ACCOUNT, stream_sid=stream_sid, call_sid=call_sid, tracks=["inbound"],
                            custom_parameters={"token": stream_token(TOKEN, call_sid)})  # fmt: skip
        await ws.send(tm.encode(tm.Start(sequence_number="1", stream_sid=stream_sid, start=info)).decode())
        for i in range(50):  # a second of audio, if the bridge took the stream
            try:
                frame = tm.MediaInfo(track="inbound", chunk=str(i), timestamp=str(i * 20), payload=AUDIO)
                await ws.send(tm.encode(tm.Media(sequence_number=str(i + 2), stream_sid=stream_sid,
                                                 media=frame)).decode())  # fmt: skip
            except websockets.ConnectionClosed:
                break
        try:
            await ws.recv()
        except websockets.ConnectionClosed:
            pass
        return ws.close_code, ws.close_reason or ""


async def _keys(redis_url: str, prefix: str) -> list[str]:
    client = client_from_url(redis_url)
    try:
        return sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}:*")])
    finally:
        await client.aclose()


async def test_hostile_callsids_in_start_write_nothing_and_leak_no_session(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: ``../x``, an absolute path and ``sub/dir/x`` wrote WAV files outside the recording
    dir; ``CA…:finals`` created a hash under another key's name; a NUL gave 1011 and leaked a session."""
    recordings = tmp_path / "area" / "recordings"
    outside = tmp_path / "area"
    hostile = [
        "../x",
        f"{tmp_path}/abs/path",
        "sub/dir/x",
        CALL + ":finals",
        "CA" + "0" * 31 + "\x00",
        "CA" + "1" * 32 + "\n12:00:00 INFO  forged",
        "ca" + "2" * 32,
        "CA" + "3" * 33,
    ]
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_RECORDING_DIR=str(recordings))
    async with BridgeProcess(tmp_path / "bridge", env) as bridge:
        for sid in hostile:
            code, reason = await _start_with(bridge.ws, sid)
            assert code == 1007, (sid, code, reason)
            assert "callSid" in reason
        active = await bridge.metric("bridge_active_calls")
        rejected = await bridge.metric("bridge_streams_rejected_total", reason="invalid_payload")
        async with httpx.AsyncClient() as client:
            ready = (await client.get(f"{bridge.url}/readyz")).json()
    assert active == 0 and ready["calls"] == 0
    assert rejected == len(hostile)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".wav"]
    assert written == []
    assert not (outside / "x.wav").exists() and not (tmp_path / "abs").exists()
    assert await _keys(redis_url, redis_prefix) == []  # no call record, no key under another name
    assert "forged" not in "".join(line for line in bridge.log().splitlines() if line.startswith("12:00:00"))


async def test_control_characters_in_request_values_cannot_forge_log_lines(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: a CallSid with ``%0A`` in ``/calls/{sid}/transcript`` (and ``/twilio/recording``)
    wrote a forged line into the text log."""
    forged = "\n99:99:99 ERROR   bridge.forged: FORGED"
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_SUBSCRIBER_SECRET=SECRET)
    async with (
        BridgeProcess(tmp_path / "bridge", env) as bridge,
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
    ):
        r = await client.get(f"/calls/{quote(CALL + forged, safe='')}/transcript")
        assert r.status_code == 400
        r = await client.get(f"/calls/{quote(CALL + forged, safe='')}/transcript", params={"token": "x\ny"})
        assert r.status_code == 400
        r = await client.get(f"/calls/{CALL}/transcript", params={"token": "v1.a.b" + forged})
        assert r.status_code == 401
        form = {"AccountSid": ACCOUNT, "CallSid": CALL + forged, "RecordingSid": "RE" + "0" * 32,
                "RecordingStatus": "completed", "RecordingUrl": "https://api.twilio.com/x" + forged}  # fmt: skip
        url = f"{bridge.url}/twilio/recording"
        for signature in ("bogus" + forged, sign(TOKEN, url, form)):
            r = await client.post("/twilio/recording", content=urlencode(form), headers={
                "content-type": "application/x-www-form-urlencoded", SIGNATURE_HEADER: signature.replace("\n", "")})
            assert r.status_code in (400, 403)
    lines = bridge.log().splitlines()
    assert lines and not any("FORGED" in line and not line.startswith(tuple("0123456789")) for line in lines)
    assert not any(line.startswith("99:99:99") for line in lines)
    assert any("\\n99:99:99" in line for line in lines)  # the value is in the log, escaped


async def test_json_logs_stay_one_object_per_line(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_SUBSCRIBER_SECRET=SECRET,
               BRIDGE_LOG_JSON="true")  # fmt: skip
    async with BridgeProcess(tmp_path / "bridge", env) as bridge, httpx.AsyncClient(base_url=bridge.url) as client:
        r = await client.get(f"/calls/{quote(CALL + chr(0x2028) + 'x' + chr(0x1b) + '[2J', safe='')}")
        assert r.status_code == 400
    docs = [json.loads(line) for line in bridge.log().splitlines() if line.startswith("{")]
    refused = [d for d in docs if "refused" in d["msg"]]
    assert refused and "\\u2028" in refused[0]["call_sid"] and "\\x1b" in refused[0]["call_sid"]
    assert all(line.startswith("{") for line in bridge.log().splitlines() if line.strip())


async def test_bad_tokens_resume_positions_and_callsids_get_clean_answers(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: a non-ASCII token was a 500; ``after=99999999999999999999`` an unhandled Redis error
    (SSE cut, WebSocket 1006); a sid ending in ``:finals`` a WRONGTYPE 500."""
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_SUBSCRIBER_SECRET=SECRET)
    token = live_auth.mint(SECRET, ["*"], 600)
    client_ = client_from_url(redis_url)
    await client_.hset(Keys(redis_prefix).call(CALL), mapping={"status": "ended", "started_at": "1.0"})
    await client_.expire(Keys(redis_prefix).call(CALL), 600)
    await client_.aclose()
    async with (
        BridgeProcess(tmp_path / "bridge", env) as bridge,
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
    ):
        assert (await client.get(f"/calls/{CALL}", params={"token": "v1.ü.ß"})).status_code == 401
        assert (await client.get("/calls", params={"token": "ünïcödé"})).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert (await client.get(f"/calls/{CALL}", headers=auth)).status_code == 200
        for after in ("99999999999999999999", "-1", "1e3", "٣", " 5_0", "0x10"):
            r = await client.get(f"/calls/{CALL}/events", params={"after": after}, headers=auth)
            assert r.status_code == 400, after
            r = await client.get(f"/calls/{CALL}/events", headers={**auth, "Last-Event-ID": after.strip().encode()})
            assert r.status_code == 400, after
        for suffix in (":finals", ":final_ids", ":streams"):
            for path in ("", "/transcript", "/quality", "/events"):
                r = await client.get(f"/calls/{CALL}{suffix}{path}", headers=auth)
                assert r.status_code == 400, (suffix, path)
        async with websockets.connect(f"{bridge.ws}/calls/{CALL}/live?after=99999999999999999999",
                                      additional_headers=auth) as ws:  # fmt: skip
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
        assert ws.close_code == 4400
        async with websockets.connect(f"{bridge.ws}/calls/{CALL}/live", additional_headers=auth) as ws:
            assert json.loads(await ws.recv())["type"] == "call_ended"
    assert "Traceback" not in bridge.log()


async def test_a_status_callback_for_a_call_that_never_streamed_expires(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: a status callback for an unknown call created ``call:{sid}`` with no TTL."""
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_RETENTION_SECONDS="3600")
    async with BridgeProcess(tmp_path / "bridge", env) as bridge, httpx.AsyncClient(timeout=10) as client:
        url = f"{bridge.url}/twilio/status"
        form = {"AccountSid": ACCOUNT, "CallSid": CALL, "CallStatus": "ringing"}
        r = await client.post(url, content=urlencode(form), headers={
            "content-type": "application/x-www-form-urlencoded", SIGNATURE_HEADER: sign(TOKEN, url, form)})
        assert r.status_code == 204
    client_ = client_from_url(redis_url)
    try:
        keys = await _keys(redis_url, redis_prefix)
        assert keys == [Keys(redis_prefix).call(CALL)]
        assert 0 < await client_.ttl(keys[0]) <= 3600
    finally:
        await client_.aclose()


@pytest.mark.parametrize(
    "recording_url",
    [
        "http://api.twilio.com/2010-04-01/Accounts/AC/Recordings/RE1",
        "https://api.twilio.com.evil.example/2010-04-01/Recordings/RE1",
        "https://user:pass@api.twilio.com/2010-04-01/Recordings/RE1",
        "ftp://api.twilio.com/RE1",
    ],
)
async def test_recording_urls_that_would_leak_credentials_are_refused(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer, recording_url: str
) -> None:
    """Regression: a ``RecordingUrl`` over plain http:// was queued, and the worker then sent Basic
    credentials over plain HTTP."""
    env = bridge_env(redis_url, redis_prefix, scripted.url)
    async with BridgeProcess(tmp_path / "bridge", env) as bridge, httpx.AsyncClient(timeout=10) as client:
        url = f"{bridge.url}/twilio/recording"
        form = {"AccountSid": ACCOUNT, "CallSid": CALL, "RecordingSid": "RE" + "0" * 32,
                "RecordingStatus": "completed", "RecordingUrl": recording_url, "RecordingChannels": "2"}  # fmt: skip
        r = await client.post(url, content=urlencode(form), headers={
            "content-type": "application/x-www-form-urlencoded", SIGNATURE_HEADER: sign(TOKEN, url, form)})
        assert r.status_code == 400 and "RecordingUrl refused" in r.text
    assert await _keys(redis_url, redis_prefix) == []  # nothing queued


async def test_rejected_streams_are_counted(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: ``bridge_streams_rejected_total`` stayed at zero after 400 rejected streams."""
    env = bridge_env(redis_url, redis_prefix, scripted.url)
    async with BridgeProcess(tmp_path / "bridge", env) as bridge:
        url = f"{bridge.ws}/twilio/media"
        for _ in range(3):  # unsigned: refused before the upgrade
            with pytest.raises(websockets.InvalidStatus):
                async with websockets.connect(url):
                    pass
        connected = tm.encode(tm.Connected()).decode()
        for frames in (["not json"], [connected, connected], ['{"event": "bogus"}']):
            async with websockets.connect(url, additional_headers={SIGNATURE_HEADER: sign(TOKEN, url)}) as ws:
                for text in frames:
                    await ws.send(text)
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
        values: dict[str, Any] = {
            reason: await bridge.metric("bridge_streams_rejected_total", reason=reason)
            for reason in ("signature", "invalid_payload", "policy", "unsupported_data")
        }
    assert values == {"signature": 3, "invalid_payload": 1, "policy": 1, "unsupported_data": 1}
