"""Operator mistakes and idle sockets against ``bridge serve`` (issue #10, items 5, 8 and 9).

Start-up refuses what cannot work with one line (no traceback), warns about what will refuse or
lose calls, and ``/readyz`` is only 200 when Redis, the recognizer and Twilio's signatures all work.
Proxy headers are believed only from ``BRIDGE_FORWARDED_ALLOW_IPS``. A media socket that never says
``start``, or goes quiet, is closed; a process carries at most ``BRIDGE_MAX_MEDIA_STREAMS`` sockets.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import websockets

from bridge.testing import ScriptedDeepgramServer, TwilioStream
from bridge.twilio.auth import SIGNATURE_HEADER, sign
from tests.support.bridges import TWILIO_TOKEN, BridgeProcess, bridge_env, run_serve
from tests.support.calls import poll, send, speech
from tests.support.nginx import free_port

ACCOUNT = "AC" + "3f" * 16
CALL = "CA" + "5d" * 16


async def _ready(bridge: BridgeProcess) -> tuple[int, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.get(f"{bridge.url}/readyz")
    return r.status_code, r.json()


async def test_a_healthy_bridge_is_ready(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_PUBLIC_URL="https://b.example",
                     BRIDGE_SUBSCRIBER_SECRET="s", TWILIO_ACCOUNT_SID=ACCOUNT)  # fmt: skip
    async with BridgeProcess(tmp_path / "bridge", env) as bridge:
        status, body = await _ready(bridge)
    assert status == 200
    assert body["checks"] == {"redis": "ok", "recognizer": "ok", "twilio": "ok"}
    assert "WARNING" not in bridge.log()


@pytest.mark.parametrize(
    ("change", "check", "warning"),
    [
        ({"REDIS_URL": "redis://127.0.0.1:{dead}/0"}, "redis", "does not answer"),
        ({"TWILIO_AUTH_TOKEN": ""}, "twilio", "TWILIO_AUTH_TOKEN is not set"),
        ({"BRIDGE_RECOGNIZER_API_KEY": ""}, "recognizer", "without a key (DEEPGRAM_API_KEY"),
        ({"BRIDGE_RECOGNIZER_URL": "ws://127.0.0.1:{dead}"}, "recognizer", ""),
    ],
    ids=["redis unreachable", "no twilio token", "no vendor key", "recognizer unreachable"],
)
async def test_readyz_is_503_and_start_up_warns_when_calls_would_fail(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer,
    change: dict[str, str], check: str, warning: str,
) -> None:  # fmt: skip
    """Regression: with Redis unreachable, no TWILIO_AUTH_TOKEN, no vendor key (or a dead recognizer),
    the bridge started silently and ``/readyz`` said ready."""
    dead = free_port()
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_PUBLIC_URL="https://b.example")
    env.update({k: v.format(dead=dead) for k, v in change.items()})
    async with BridgeProcess(tmp_path / "bridge", env, ready_path="/healthz") as bridge:
        status, body = await _ready(bridge)
    assert status == 503 and body["status"] == "unready"
    assert body["checks"][check] != "ok"
    assert [name for name, value in body["checks"].items() if value != "ok"] == [check]
    if warning:
        assert any("WARNING" in line and warning in line for line in bridge.log().splitlines()), bridge.log()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRIDGE_PUBLIC_URL": "bridge.example.com"}, "BRIDGE_PUBLIC_URL='bridge.example.com' must be an absolute"),
        ({"BRIDGE_PORT": "eighty"}, "BRIDGE_PORT='eighty' is not an integer"),
        ({"BRIDGE_RETENTION_SECONDS": "0"}, "BRIDGE_RETENTION_SECONDS=0 must be at least 1"),
        ({"BRIDGE_RECOGNIZER_URL": "api.deepgram.com"}, "must be a ws:// or wss:// URL"),
        ({"BRIDGE_FORWARDED_ALLOW_IPS": "10.0.0.0/33"}, "is not an IP address or network"),
        ({"BRIDGE_MEDIA_START_TIMEOUT": "-1"}, "must be a positive number of seconds"),
        ({"BRIDGE_RECORDING_DIR": "{file}/recordings"}, "BRIDGE_RECORDING_DIR="),
    ],
    ids=["public url without scheme", "malformed port", "zero retention", "recognizer url without scheme",
         "bad proxy network", "negative timeout", "unwritable recording dir"],
)
def test_start_up_refuses_unusable_settings_with_one_clear_line(
    redis_url: str, tmp_path: Path, env: dict[str, str], message: str
) -> None:
    """Regression: a public URL without scheme was accepted (the TwiML then streamed to a URL without
    one); malformed values exited after a raw traceback."""
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("x")
    full = {"REDIS_URL": redis_url, "TWILIO_AUTH_TOKEN": "t", "BRIDGE_RECORDING_DIR": str(tmp_path / "rec")}
    full.update({k: v.format(file=a_file) for k, v in env.items()})
    code, output = run_serve(full, timeout=30)
    assert code == 2
    assert "Traceback" not in output
    [line] = [line for line in output.splitlines() if line.strip()]
    assert line.startswith("bridge: ") and message in line


async def test_proxy_headers_are_believed_only_from_the_configured_proxies(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: with BRIDGE_PUBLIC_URL unset the bridge trusted X-Forwarded-* from anyone, so a
    forged Host + X-Forwarded-Proto made a signature computed for another app's URL valid."""
    other_app = "https://other-app.example/twilio/voice"  # a real Twilio request, signed for someone else
    form = {"AccountSid": ACCOUNT, "CallSid": CALL, "From": "+15550100001", "To": "+15550100002"}
    headers = {
        "content-type": "application/x-www-form-urlencoded",
        "host": "other-app.example",
        "x-forwarded-proto": "https",
        SIGNATURE_HEADER: sign(TWILIO_TOKEN, other_app, form),
    }

    async def replay(bridge: BridgeProcess) -> int:
        # From 127.0.0.2: not the proxy (the default trusts the loopback proxy at 127.0.0.1 only).
        transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=transport, timeout=10) as client:
            r = await client.post(f"http://127.0.0.1:{bridge.port}/twilio/voice", content=urlencode(form),
                                  headers=headers)  # fmt: skip
        return r.status_code

    env = bridge_env(redis_url, redis_prefix, scripted.url)
    async with BridgeProcess(tmp_path / "default", env, host="0.0.0.0") as bridge:
        assert await replay(bridge) == 403
    trusting = {**env, "BRIDGE_FORWARDED_ALLOW_IPS": "127.0.0.2"}  # that peer is our proxy: believed
    async with BridgeProcess(tmp_path / "trusting", trusting, host="0.0.0.0") as bridge:
        assert await replay(bridge) == 200


async def test_a_media_socket_must_start_in_time_and_keep_sending(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: no deadline for ``start`` after the upgrade (200 signed idle sockets stayed open 70 s),
    and none for a started stream that went quiet."""
    env = bridge_env(redis_url, redis_prefix, scripted.url,
                     BRIDGE_MEDIA_START_TIMEOUT="1", BRIDGE_MEDIA_IDLE_TIMEOUT="1.5")  # fmt: skip
    async with (
        BridgeProcess(tmp_path / "bridge", env) as bridge,
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
    ):
        url = f"{bridge.ws}/twilio/media"
        idle = [
            await websockets.connect(url, additional_headers={SIGNATURE_HEADER: sign(TWILIO_TOKEN, url)})
            for _ in range(20)
        ]
        for ws in idle:
            async with asyncio.timeout(15):  # a bound for a broken build, not a timing assertion
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
            assert (ws.close_code, ws.close_reason) == (1008, "no start within 1 s")

        async with TwilioStream(url, CALL, auth_token=TWILIO_TOKEN) as stream:
            await send(stream, speech(1.0, 1))
            assert stream.ws is not None
            async with asyncio.timeout(15):
                with pytest.raises(websockets.ConnectionClosed):
                    await stream.ws.recv()
            assert (stream.ws.close_code, stream.ws.close_reason) == (1008, "no media for 1.5 s")

        async def ended() -> bool:
            return (await client.get(f"/calls/{CALL}")).json().get("status") == "ended"

        await poll(ended, "the quiet call to end")  # after the reconnect grace
        start_timeouts = await bridge.metric("bridge_streams_rejected_total", reason="start_timeout")
        idle_timeouts = await bridge.metric("bridge_streams_rejected_total", reason="idle_timeout")
        open_sockets = await bridge.metric("bridge_media_streams")
    assert (start_timeouts, idle_timeouts, open_sockets) == (20, 1, 0)


async def test_media_sockets_beyond_the_cap_are_closed_1013(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_MAX_MEDIA_STREAMS="2")
    async with BridgeProcess(tmp_path / "bridge", env) as bridge:
        url = f"{bridge.ws}/twilio/media"
        signed = {SIGNATURE_HEADER: sign(TWILIO_TOKEN, url)}
        first = await websockets.connect(url, additional_headers=signed)
        second = await websockets.connect(url, additional_headers=signed)
        async with websockets.connect(url, additional_headers=signed) as third:
            with pytest.raises(websockets.ConnectionClosed):
                await third.recv()
        assert (third.close_code, third.close_reason) == (1013, "too many media streams on this instance")
        await first.close()
        await second.close()

        async def room_again() -> bool:
            return await bridge.metric("bridge_media_streams") == 0

        await poll(room_again, "the sockets to be released")
        async with TwilioStream(url, CALL, auth_token=TWILIO_TOKEN) as stream:  # a slot is free again
            await send(stream, speech(1.0, 2))
            await stream.stop()
            assert stream.ws is not None and stream.ws.close_code == 1000
        assert await bridge.metric("bridge_streams_rejected_total", reason="capacity") == 1
