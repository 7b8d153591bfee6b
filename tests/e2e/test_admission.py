"""Admission control (issue #14): an instance at capacity, overloaded or draining refuses *new* calls
where refusing is clear (the voice webhook, the media upgrade), and the calls it carries lose nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from bridge.call.admission import Admission
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer, TwilioStream
from bridge.twilio.auth import SIGNATURE_HEADER, sign
from tests.support import eventually
from tests.support.bridges import TWILIO_TOKEN, BridgeProcess, bridge_env
from tests.support.calls import send_both, speech

AGENT = "+15550100999"


async def _voice(http: str, call_sid: str) -> httpx.Response:
    form = {"AccountSid": "AC" + "0" * 32, "CallSid": call_sid, "From": "+15550100001", "To": "+15550100002"}
    url = http + "/twilio/voice"
    headers = {"content-type": "application/x-www-form-urlencoded", SIGNATURE_HEADER: sign(TWILIO_TOKEN, url, form)}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url, content=urlencode(form), headers=headers)


async def _legs(call: TwilioStream, inbound: bytes, outbound: bytes, start: int, end: int) -> None:
    for i in range(start, end, 160):
        await call.media("inbound", i // 8, inbound[i : i + 160])
        await call.media("outbound", i // 8, outbound[i : i + 160])


def _streams(twiml: str) -> list[ET.Element]:
    return ET.fromstring(twiml).findall(".//Stream")


async def _media_status(ws_url: str) -> int:
    """The HTTP status of a media upgrade that the bridge refuses (101 if it accepts)."""
    try:
        async with websockets.connect(ws_url, additional_headers={SIGNATURE_HEADER: sign(TWILIO_TOKEN, ws_url)}):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_at_capacity_a_new_call_is_carried_on_untranscribed_and_the_calls_in_progress_lose_nothing(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_MAX_CALLS="1", BRIDGE_VOICE_DIAL=AGENT)
    async with BridgeProcess(tmp_path / "bridge", env) as bridge:
        media = f"{bridge.ws}/twilio/media"
        first = await _voice(bridge.url, "CA" + "a1" * 16)
        assert first.status_code == 200 and len(_streams(first.text)) == 1
        inbound, outbound = speech(2.0, 1), speech(2.0, 2)
        async with TwilioStream(media, "CA" + "a1" * 16, auth_token=TWILIO_TOKEN,
                                tracks=("inbound", "outbound")) as call:  # fmt: skip
            await _legs(call, inbound, outbound, 0, 8000)
            # A second call while the first is on: it still reaches the agent, without a stream.
            second = await _voice(bridge.url, "CA" + "b2" * 16)
            assert second.status_code == 200
            assert _streams(second.text) == []
            dial = ET.fromstring(second.text).find("Dial/Number")
            assert dial is not None and dial.text == AGENT
            # A media upgrade now (a new stream) is refused before the upgrade, so a proxy can retry.
            assert await _media_status(media) == 503
            await _legs(call, inbound, outbound, 8000, 16000)
            await call.stop()
        assert await bridge.metric("bridge_admission_refused_total", where="voice", reason="capacity") == 1
        assert await bridge.metric("bridge_admission_refused_total", where="media", reason="capacity") == 1
        assert "call NOT transcribed" in bridge.log()
    # Every byte of the call in progress reached the recognizer, on both legs.
    heard = sorted(len(c.audio) for c in scripted.connections)
    assert heard == [16000, 16000]


async def test_with_overload_action_503_the_voice_webhook_refuses_the_call(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_MAX_CALLS="1", BRIDGE_OVERLOAD_ACTION="503")
    async with BridgeProcess(tmp_path / "bridge", env) as bridge:
        async with TwilioStream(f"{bridge.ws}/twilio/media", "CA" + "c3" * 16, auth_token=TWILIO_TOKEN) as call:
            await send_both(call, speech(0.5, 3), b"")
            refused = await _voice(bridge.url, "CA" + "d4" * 16)
            await call.stop()
        assert refused.status_code == 503 and "BRIDGE_MAX_CALLS=1" in refused.text
        assert await bridge.metric("bridge_admission_refused_total", where="voice", reason="capacity") == 1


async def test_an_event_loop_running_late_refuses_new_calls_until_it_recovers(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TWILIO_TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=scripted.url, recognizer_api_key="k",
        admission_lag_ms=50,
    )  # fmt: skip
    async with running_bridge(settings) as (app, http):
        admission: Admission = app.state.admission
        assert (await _voice(http, "CA" + "e5" * 16)).status_code == 200
        assert _streams((await _voice(http, "CA" + "e5" * 16)).text)

        async def hog(seconds: float) -> None:  # CPU-bound work on the loop, as an overload would be
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(0.15)
                await asyncio.sleep(0)

        await hog(1.5)
        assert admission.lag > 0.05
        busy = await _voice(http, "CA" + "f6" * 16)
        assert busy.status_code == 200 and _streams(busy.text) == []
        await eventually(lambda: admission.lag < 0.05, timeout=10)
        assert _streams((await _voice(http, "CA" + "a7" * 16)).text)
    metrics = app.state.metrics
    assert metrics.admission_refused.labels("voice", "overloaded")._value.get() == 1


def test_the_stream_gate_is_twice_the_voice_limit_and_draining_refuses_both() -> None:
    draining = False
    settings = dataclasses.replace(Settings(), admission_lag_ms=100, max_calls=0)
    admission = Admission(settings, calls=lambda: 5, draining=lambda: draining)
    admission.lag = 0.15
    refusal = admission.refuse("voice")
    assert refusal is not None and refusal.reason == "overloaded"
    assert admission.refuse("media") is None  # a reconnecting stream of a call here may still come in
    admission.lag = 0.25
    assert admission.refuse("media") is not None
    admission.lag = 0.0
    draining = True
    assert [r.reason if r else None for r in (admission.refuse("voice"), admission.refuse("media"))] == [
        "draining", "draining"]  # fmt: skip


@pytest.mark.parametrize(("interval", "expected"), [(0.05, 0.0488), (1.0, 0.632)])
def test_smoothed_lag_is_weighted_by_time(interval: float, expected: float) -> None:
    admission = Admission(Settings(), calls=lambda: 0, draining=lambda: False)
    admission.observe(1.0, interval)
    assert admission.lag == pytest.approx(expected, abs=1e-3)
