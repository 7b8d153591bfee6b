"""X-Twilio-Signature on HTTP webhooks and on the WebSocket upgrade, direct and behind a proxy."""

from __future__ import annotations

import dataclasses
import logging
from urllib.parse import parse_qsl

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bridge.settings import Settings
from bridge.twilio.auth import sign, stream_token, verify_stream_token
from tests.twilio.conftest import AUTH_TOKEN, CALL_SID, Bridge, fixture_text, make_app, serve

pytestmark = pytest.mark.usefixtures("media_transport")

FORM = fixture_text("call_status_completed.form")
FORM_HEADERS = {"content-type": "application/x-www-form-urlencoded"}


def _params() -> dict[str, str]:
    return dict(parse_qsl(FORM, keep_blank_values=True))


async def _post(
    bridge: Bridge,
    signature: str | None,
    *,
    body: str = FORM,
    path: str = "/twilio/status",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    h = dict(FORM_HEADERS, **(headers or {}))
    if signature is not None:
        h["X-Twilio-Signature"] = signature
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.post(bridge.http + path, content=body, headers=h)


async def _ws_status(url: str, headers: dict[str, str]) -> int:
    """101 when the upgrade is accepted, else the HTTP status of the refusal."""
    try:
        async with connect(url, additional_headers=headers, open_timeout=5):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def test_stream_token_is_per_call_and_per_secret() -> None:
    token = stream_token(AUTH_TOKEN, CALL_SID)
    assert verify_stream_token(AUTH_TOKEN, CALL_SID, token)
    assert not verify_stream_token(AUTH_TOKEN, "CA" + "1" * 32, token)
    assert not verify_stream_token("other-secret", CALL_SID, token)
    assert not verify_stream_token(AUTH_TOKEN, CALL_SID, "")
    assert not verify_stream_token(AUTH_TOKEN, CALL_SID, "ünïcode")
    assert not verify_stream_token("", CALL_SID, stream_token("", CALL_SID))


async def test_http_signature_accept_and_reject(bridge: Bridge) -> None:
    url = bridge.http + "/twilio/status"
    good = sign(AUTH_TOKEN, url, _params())
    assert (await _post(bridge, good)).status_code == 204
    assert (await _post(bridge, None)).status_code == 403
    assert (await _post(bridge, sign("wrong-token", url, _params()))).status_code == 403
    tampered = FORM.replace("CallDuration=37", "CallDuration=1")
    response = await _post(bridge, good, body=tampered)
    assert response.status_code == 403 and "does not match" in response.text
    assert len(bridge.store.updates) == 1  # only the genuine request reached the store


async def test_http_signature_covers_the_query_string(bridge: Bridge) -> None:
    url = bridge.http + "/twilio/status?attempt=2"
    assert (await _post(bridge, sign(AUTH_TOKEN, url, _params()), path="/twilio/status?attempt=2")).status_code == 204
    assert (
        await _post(
            bridge, sign(AUTH_TOKEN, bridge.http + "/twilio/status", _params()), path="/twilio/status?attempt=2"
        )
    ).status_code == 403


async def test_http_signature_behind_a_proxy_uses_the_public_url(settings: Settings) -> None:
    public = dataclasses.replace(settings, public_url="https://bridge.example.com")
    async with serve(make_app(public)) as bridge:
        signed_public = sign(AUTH_TOKEN, "https://bridge.example.com/twilio/status", _params())
        assert (await _post(bridge, signed_public)).status_code == 204
        # what the bridge sees locally is not what Twilio signed
        signed_local = sign(AUTH_TOKEN, bridge.http + "/twilio/status", _params())
        assert (await _post(bridge, signed_local)).status_code == 403


async def test_missing_auth_token_refuses_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with serve(make_app(Settings(twilio_auth_token=""))) as bridge:
        response = await _post(bridge, sign("", bridge.http + "/twilio/status", _params()))
        assert response.status_code == 403
        assert "TWILIO_AUTH_TOKEN is not configured" in response.text
        assert await _ws_status(bridge.ws + "/twilio/media", {"x-twilio-signature": "x"}) == 403
        assert bridge.store.updates == []
    assert any("TWILIO_AUTH_TOKEN is not configured" in r.getMessage() for r in caplog.records)


async def test_insecure_mode_skips_checks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with serve(make_app(Settings(insecure_skip_signature=True))) as bridge:
        assert (await _post(bridge, None)).status_code == 204
        assert await _ws_status(bridge.ws + "/twilio/media", {}) == 101


async def test_ws_signature_accept_and_reject(bridge: Bridge) -> None:
    url = bridge.ws + "/twilio/media"
    assert await _ws_status(url, {"x-twilio-signature": sign(AUTH_TOKEN, url)}) == 101
    assert await _ws_status(url, {}) == 403
    assert await _ws_status(url, {"x-twilio-signature": sign("wrong-token", url)}) == 403


async def test_ws_signature_https_vs_wss_trap(settings: Settings) -> None:
    """Twilio signs the wss:// URL from the TwiML; a check against https:// would wrongly refuse."""
    public = dataclasses.replace(settings, public_url="https://bridge.example.com")
    async with serve(make_app(public)) as bridge:
        local = bridge.ws + "/twilio/media"
        wss = sign(AUTH_TOKEN, "wss://bridge.example.com/twilio/media")
        https = sign(AUTH_TOKEN, "https://bridge.example.com/twilio/media")
        assert wss != https
        assert await _ws_status(local, {"x-twilio-signature": wss}) == 101
        assert await _ws_status(local, {"x-twilio-signature": https}) == 403
        # the local ws:// URL is not what Twilio signed either
        assert await _ws_status(local, {"x-twilio-signature": sign(AUTH_TOKEN, local)}) == 403
