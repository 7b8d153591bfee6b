"""Per-call options through the whole bridge (issue 15): a number profile applied by the voice
webhook, carried by the stream's ``<Parameter>``s, validated once at ``start`` and sent to the vendor
in its own form; a bad parameter closes the stream with its reason."""

from __future__ import annotations

import dataclasses
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from bridge.options import CallOptions
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer, ScriptedScribeServer, TwilioStream
from bridge.twilio.auth import sign
from tests.support import eventually

TOKEN = "options-token"
PROFILED, PLAIN = "+15550100002", "+15550100003"
PROFILE = CallOptions(language="es", endpointing=500, utterance_end=1500, keyterms=("Acme Cloud", "Zephyr"),
                      redact=("pci", "ssn"))  # fmt: skip

pytestmark = pytest.mark.timeout(60)


def _settings(redis_url: str, prefix: str, tmp_path: Path, **kw: object) -> Settings:
    return dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=prefix, twilio_auth_token=TOKEN, recording_dir=tmp_path,
        recognizer="deepgram", recognizer_api_key="scripted", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def _twiml_parameters(http: str, call_sid: str, to: str) -> dict[str, str]:
    form = {"AccountSid": "AC" + "0" * 32, "CallSid": call_sid, "From": "+15550100001", "To": to}
    url = http + "/twilio/voice"
    headers = {"content-type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sign(TOKEN, url, form)}
    async with httpx.AsyncClient() as client:
        response = await client.post(url, content=urlencode(form), headers=headers)
    assert response.status_code == 200, response.text
    stream = ET.fromstring(response.text).find("Start/Stream")
    assert stream is not None
    return {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


async def test_a_number_profile_changes_the_options_of_its_calls_only(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    settings = _settings(redis_url, redis_prefix, tmp_path, recognizer_url=scripted.url,
                         number_profiles={PROFILED: PROFILE})  # fmt: skip
    async with running_bridge(settings) as (app, http):
        media = http.replace("http", "ws") + "/twilio/media"
        carried = {}
        for call_sid, to in (("CA" + "a1" * 16, PROFILED), ("CA" + "b2" * 16, PLAIN)):
            params = await _twiml_parameters(http, call_sid, to)
            async with TwilioStream(media, call_sid, auth_token=TOKEN, custom_parameters=params) as stream:
                await stream.media("inbound", 0, b"\x10" * 160)
                await eventually(lambda sid=call_sid: sid in app.state.calls.sessions)
                carried[to] = app.state.calls.sessions[call_sid].options
                await stream.stop()
    profiled, plain = (c.query for c in scripted.connections)
    assert profiled["language"] == "es" and plain["language"] == "en"
    assert (profiled["endpointing"], profiled["utterance_end_ms"]) == ("500", "1500")
    assert (plain["endpointing"], plain["utterance_end_ms"]) == ("300", "1000")
    keyterms = [v for k, v in scripted.connections[0].query_items if k == "keyterm"]
    assert keyterms == ["Acme Cloud", "Zephyr"]  # nova-3's form: one repeated parameter each
    assert not [k for k, _ in scripted.connections[1].query_items if k in ("keyterm", "keywords")]
    # Redaction is someone else's step: the options object carries it for them.
    assert carried[PROFILED].redact == ("pci", "ssn") and carried[PLAIN] == CallOptions()


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"endpointing": "soon"}, "invalid stream parameter endpointing: 'soon' is not a whole number"),
        ({"recognizer": "embedded"}, "invalid stream parameter recognizer: 'embedded' is not configured"),
    ],
)
async def test_an_invalid_stream_parameter_closes_the_stream_with_its_reason(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer,
    caplog: pytest.LogCaptureFixture, params: dict[str, str], reason: str,
) -> None:  # fmt: skip
    call_sid = "CA" + "c3" * 16
    settings = _settings(redis_url, redis_prefix, tmp_path, recognizer_url=scripted.url)
    with caplog.at_level(logging.WARNING):
        async with running_bridge(settings) as (_app, http), httpx.AsyncClient(base_url=http) as client:
            media = http.replace("http", "ws") + "/twilio/media"
            async with TwilioStream(media, call_sid, auth_token=TOKEN, custom_parameters=params) as stream:
                assert stream.ws is not None
                await stream.ws.wait_closed()
                assert stream.ws.close_code == 1007
                assert (stream.ws.close_reason or "").startswith(reason)
            assert (await client.get("/readyz")).status_code == 200  # the bridge is fine
    assert scripted.connections == []  # no recognizer was opened for it
    logged = [r for r in caplog.records if getattr(r, "call_sid", None) == call_sid and "invalid" in r.getMessage()]
    assert logged, "no log line with the call id"


async def test_the_recognizer_parameter_picks_one_of_the_configured_recognizers(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    call_sid = "CA" + "d4" * 16
    async with ScriptedScribeServer() as scribe:
        settings = _settings(redis_url, redis_prefix, tmp_path, recognizer_url=scripted.url,
                             fallback_recognizer="elevenlabs", fallback_recognizer_url=scribe.url)  # fmt: skip
        async with running_bridge(settings) as (_app, http), httpx.AsyncClient(base_url=http) as client:
            media = http.replace("http", "ws") + "/twilio/media"
            params = {"recognizer": "elevenlabs", "keyterms": "Acme,Zephyr Cloud"}
            async with TwilioStream(media, call_sid, auth_token=TOKEN, custom_parameters=params) as stream:
                for i in range(0, 16000, 160):
                    await stream.media("inbound", i // 8, bytes([i % 251]) * 160)
                await stream.stop()
            for _ in range(200):
                info = (await client.get(f"/calls/{call_sid}")).json()
                if info["status"] == "ended":
                    break
    assert scripted.connections == [] and len(scribe.connections) == 1
    assert [v for k, v in scribe.connections[0].query if k == "keyterms"] == ["Acme", "Zephyr Cloud"]
    assert info["served"]["inbound"] == [{"recognizer": "elevenlabs", "start": 0.0, "end": 2.0}]
