"""Voice webhook TwiML in both stream modes, and the status callbacks recording lifecycle."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest

from bridge.options import PARAMETERS, CallOptions, from_parameters
from bridge.settings import Settings
from bridge.twilio.auth import sign, stream_token
from tests.twilio.conftest import AUTH_TOKEN, CALL_SID, STREAM_SID, Bridge, fixture_text, make_app, serve

FORM_HEADERS = {"content-type": "application/x-www-form-urlencoded"}
VOICE_FORM = {
    "AccountSid": "AC3f1b2c4d5e6f708192a3b4c5d6e7f801",
    "CallSid": CALL_SID,
    "From": "+15550100001",
    "To": "+15550100002",
    "CallStatus": "ringing",
    "Direction": "inbound",
}
PUBLIC = "https://bridge.example.com"


async def _signed_post(
    bridge: Bridge,
    path: str,
    form: dict[str, str],
    *,
    signed_base: str | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    url = (signed_base or bridge.http) + path
    h = dict(FORM_HEADERS, **(headers or {}))
    h["X-Twilio-Signature"] = sign(AUTH_TOKEN, url, form)
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.post(bridge.http + path, content=urlencode(form), headers=h)


async def _twiml(settings: Settings, form: dict[str, str] = VOICE_FORM) -> ET.Element:
    async with serve(make_app(settings)) as bridge:
        response = await _signed_post(bridge, "/twilio/voice", form, signed_base=settings.public_url or None)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return ET.fromstring(response.text)


def _params(stream: ET.Element) -> dict[str, str]:
    return {p.attrib["name"]: p.attrib["value"] for p in stream.findall("Parameter")}


async def test_start_mode_forks_both_tracks_and_holds(settings: Settings) -> None:
    s = dataclasses.replace(settings, public_url=PUBLIC, voice_greeting="This call is transcribed.", hold_seconds=120)
    root = await _twiml(s)
    assert [child.tag for child in root] == ["Start", "Say", "Pause"]
    stream = root.find("Start/Stream")
    assert stream is not None
    assert stream.attrib["url"] == "wss://bridge.example.com/twilio/media"
    assert stream.attrib["track"] == "both_tracks"
    assert stream.attrib["statusCallback"] == "https://bridge.example.com/twilio/stream-status"
    assert _params(stream) == {
        "token": stream_token(AUTH_TOKEN, CALL_SID),
        "From": "+15550100001",
        "To": "+15550100002",
        "CallSid": CALL_SID,
    }
    assert root.findtext("Say") == "This call is transcribed."
    assert root.find("Pause").attrib["length"] == "120"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("dial", "child", "text"),
    [
        ("+15550100003", "Number", "+15550100003"),
        ("sip:agent@pbx.example.com", "Sip", "sip:agent@pbx.example.com"),
        ("client:agent42", "Client", "agent42"),
    ],
)
async def test_start_mode_dials_the_agent(settings: Settings, dial: str, child: str, text: str) -> None:
    root = await _twiml(dataclasses.replace(settings, public_url=PUBLIC, voice_dial=dial))
    assert [c.tag for c in root] == ["Start", "Dial"]
    [target] = list(root.find("Dial"))  # type: ignore[arg-type]
    assert target.tag == child and (target.text or "").strip() == text


async def test_connect_mode_is_inbound_only_then_hangs_up(settings: Settings) -> None:
    root = await _twiml(
        dataclasses.replace(settings, public_url=PUBLIC, stream_mode="connect", voice_dial="+15550100003")
    )
    assert [c.tag for c in root] == ["Connect", "Hangup"]
    stream = root.find("Connect/Stream")
    assert stream is not None
    assert stream.attrib["track"] == "inbound_track"  # anything else is Twilio error 31941
    assert stream.attrib["url"] == "wss://bridge.example.com/twilio/media"
    assert _params(stream)["token"] == stream_token(AUTH_TOKEN, CALL_SID)


async def test_public_url_is_derived_from_the_request_without_config(settings: Settings) -> None:
    async with serve(make_app(settings)) as bridge:
        response = await _signed_post(bridge, "/twilio/voice", VOICE_FORM)
        assert response.status_code == 200
        stream = ET.fromstring(response.text).find("Start/Stream")
        assert stream is not None
        assert stream.attrib["url"] == f"{bridge.ws}/twilio/media"
        assert stream.attrib["statusCallback"] == f"{bridge.http}/twilio/stream-status"


async def test_parameters_stay_under_twilio_limit(settings: Settings) -> None:
    root = await _twiml(dataclasses.replace(settings, public_url=PUBLIC), dict(VOICE_FORM, From="9" * 800))
    stream = root.find("Start/Stream")
    assert stream is not None
    for p in stream.findall("Parameter"):
        assert len(p.attrib["name"]) + len(p.attrib["value"]) < 500


async def test_voice_without_call_sid_is_400(bridge: Bridge) -> None:
    form = {k: v for k, v in VOICE_FORM.items() if k != "CallSid"}
    response = await _signed_post(bridge, "/twilio/voice", form)
    assert response.status_code == 400 and "CallSid" in response.text


async def test_voice_rejects_non_form_bodies(bridge: Bridge) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.post(bridge.http + "/twilio/voice", json=VOICE_FORM)
    assert response.status_code == 415


async def test_oversized_form_is_413(bridge: Bridge) -> None:
    response = await _signed_post(bridge, "/twilio/voice", dict(VOICE_FORM, Junk="x" * 70_000))
    assert response.status_code == 413


async def test_call_status_updates_the_store(bridge: Bridge) -> None:
    form = dict(parse_qsl(fixture_text("call_status_completed.form")))
    response = await _signed_post(bridge, "/twilio/status", form)
    assert response.status_code == 204
    assert bridge.store.updates == [
        (
            CALL_SID,
            {"call_status": "completed", "call_duration": "37", "call_status_at": "Tue, 14 Jan 2025 10:12:43 +0000"},
        ),
    ]


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("stream_status_started.form", {"stream_status": "stream-started", "stream_sid": STREAM_SID}),
        (
            "stream_status_error.form",
            {
                "stream_status": "stream-error",
                "stream_sid": STREAM_SID,
                "stream_error": "Stream - WebSocket - Connection Refused",
            },
        ),
    ],
)
async def test_stream_status_updates_the_store(bridge: Bridge, fixture: str, expected: dict[str, str]) -> None:
    form = dict(parse_qsl(fixture_text(fixture)))
    response = await _signed_post(bridge, "/twilio/stream-status", form)
    assert response.status_code == 204
    assert bridge.store.updates == [(CALL_SID, expected)]


ACCOUNT_SID = "AC" + "3f" * 16


@pytest.mark.parametrize(
    ("path", "form", "reason"),
    [
        ("/twilio/status", {"AccountSid": ACCOUNT_SID, "CallStatus": "completed"}, "CallSid"),
        ("/twilio/status", {"AccountSid": ACCOUNT_SID, "CallSid": CALL_SID, "CallStatus": "melted"}, "CallStatus"),
        (
            "/twilio/stream-status",
            {"AccountSid": ACCOUNT_SID, "CallSid": CALL_SID, "StreamSid": STREAM_SID, "StreamEvent": "stream-paused"},
            "StreamEvent",
        ),
        ("/twilio/stream-status", {"AccountSid": ACCOUNT_SID, "CallSid": CALL_SID}, "StreamSid"),
        # SIDs not shaped like Twilio's never reach the store (nor a file name, nor a key name).
        ("/twilio/status", {"AccountSid": ACCOUNT_SID, "CallSid": "CA1", "CallStatus": "completed"}, "CallSid"),
        (
            "/twilio/status",
            {"AccountSid": ACCOUNT_SID, "CallSid": CALL_SID + ":finals", "CallStatus": "completed"},
            "CallSid",
        ),
        ("/twilio/status", {"AccountSid": "AC1", "CallSid": CALL_SID, "CallStatus": "completed"}, "AccountSid"),
        ("/twilio/voice", {"AccountSid": ACCOUNT_SID, "CallSid": "../" + CALL_SID}, "CallSid"),
        (
            "/twilio/stream-status",
            {"AccountSid": ACCOUNT_SID, "CallSid": CALL_SID, "StreamSid": "MZ\n1", "StreamEvent": "stream-started"},
            "StreamSid",
        ),
    ],
)
async def test_bad_status_forms_are_400(bridge: Bridge, path: str, form: dict[str, str], reason: str) -> None:
    response = await _signed_post(bridge, path, form)
    assert response.status_code == 400
    assert reason in response.text
    assert bridge.store.updates == []


async def test_a_number_profile_rides_along_with_its_calls_only(settings: Settings) -> None:
    profile = CallOptions(language="es", endpointing=False, keyterms=("Acme Cloud", "Zephyr"), redact=("pci",))
    s = dataclasses.replace(settings, public_url=PUBLIC, number_profiles={"+15550100002": profile})
    profiled = _params(await _stream_of(s, VOICE_FORM))
    other = _params(await _stream_of(s, {**VOICE_FORM, "To": "+15550100099"}))
    assert {k: v for k, v in profiled.items() if k in PARAMETERS} == {
        "language": "es", "endpointing": "false", "keyterms": "Acme Cloud,Zephyr", "redact": "pci",
    }  # fmt: skip
    assert from_parameters(profiled) == profile  # what the stream's start brings back
    assert not set(other) & set(PARAMETERS)
    assert profiled["To"] == "+15550100002" and other["To"] == "+15550100099"


async def _stream_of(settings: Settings, form: dict[str, str]) -> ET.Element:
    stream = (await _twiml(settings, form)).find("Start/Stream")
    assert stream is not None
    return stream
