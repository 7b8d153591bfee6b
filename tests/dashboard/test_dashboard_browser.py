"""The agent-assist page in a real browser (Debian's chromium driven by Playwright).

A call is replayed through a running bridge while the page is open: the call shows up in the list,
caller and agent lines are told apart, partials are provisional (italic) and finals settle in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from pathlib import Path

import pytest

from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer
from bridge.twilio.replay import replay

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CALL = Path(__file__).resolve().parents[2] / "fixtures" / "calls" / "short_call.wav"
TOKEN = "dashboard-token"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium: run deploy/system-deps.sh")


async def test_live_transcript_renders_caller_and_agent_with_partials_replaced_by_finals(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    from playwright.async_api import async_playwright

    assert shutil.which("chromium")
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=scripted.url,
    )
    call_sid = "CA" + "da" * 16
    async with running_bridge(settings) as (_app, http), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            ws = http.replace("http://", "ws://")
            # Pace the call so the page sees it live (partials before finals).
            player = asyncio.create_task(
                replay(CALL, url=f"{ws}/twilio/media", auth_token=TOKEN, call_sid=call_sid, speed=4.0)
            )
            await page.goto(f"{http}/")
            await page.locator(f"#calls li[data-sid='{call_sid}']").click(timeout=15000)
            # Partials come and go; read one's style in the same tick it is seen.
            style = await page.wait_for_function(
                "() => { const e = document.querySelector('.line.partial .text');"
                " return e && e.isConnected && getComputedStyle(e).fontStyle; }",
                timeout=15000,
            )
            assert await style.json_value() == "italic"
            await player
            await page.locator(".notice", has_text="Call ended").wait_for(timeout=20000)

            finals = page.locator(".line.final")
            count = await finals.count()
            assert count >= 28  # 14.8 s per track, one scripted final per second of audio
            assert await page.locator(".line.partial").count() == 0  # every partial settled
            assert await page.locator(".line.final.inbound .who").first.inner_text() == "Caller"
            assert await page.locator(".line.final.outbound .who").first.inner_text() == "Agent"
            await page.screenshot(path=str(tmp_path / "dashboard.png"))
        finally:
            await browser.close()


SECRET = "dashboard-secret"


async def _ended_call(settings: Settings, call_sid: str) -> None:
    """A call the page can open (so a refusal is about the token, not an unknown call)."""
    from bridge.store import Store, client_from_url

    client = client_from_url(settings.redis_url)
    store = Store(client, prefix=settings.redis_prefix, retention_seconds=600)
    try:
        await store.call_started(call_sid, stream_sid="MZ" + "0" * 32, tracks=["inbound"], started_at=1.0)
        await store.call_ended(call_sid, ended_at=2.0, reason="stop")
    finally:
        await client.aclose()


async def test_an_expired_token_stops_the_page_reconnecting_and_says_why(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: with an expired token the dashboard reconnected about once a second for ever, and it
    put the token in every URL it requested."""
    from playwright.async_api import async_playwright

    from bridge.live import auth

    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=scripted.url, subscriber_secret=SECRET,
    )
    call_sid = "CA" + "de" * 16
    expired = auth.mint(SECRET, ["*"], -60)
    await _ended_call(settings, call_sid)
    async with running_bridge(settings) as (_app, http), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            urls: list[str] = []
            sockets: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            page.on("websocket", lambda ws: sockets.append(ws.url))
            await page.goto(f"{http}/?call={call_sid}#token={expired}")
            banner = page.locator("#auth")
            await banner.wait_for(state="visible", timeout=15000)
            assert "Access denied" in await banner.inner_text()
            assert "expired" in await banner.inner_text()
            await page.wait_for_timeout(3000)  # a reconnect loop would have tried again by now
            assert len(sockets) == 1
            assert "stopped (4401" in await page.locator("#status").inner_text()
            assert all(expired not in u for u in urls + sockets)
            assert expired not in page.url
        finally:
            await browser.close()


async def test_the_token_travels_in_headers_not_in_urls(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    from playwright.async_api import async_playwright

    from bridge.live import auth

    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=scripted.url, subscriber_secret=SECRET,
    )
    call_sid = "CA" + "df" * 16
    token = auth.mint(SECRET, ["*"], 600)
    async with running_bridge(settings) as (_app, http), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            urls: list[str] = []
            listed: list[str] = []
            page.on("request", lambda r: urls.append(r.url))
            page.on("request", lambda r: listed.append(r.headers.get("authorization", ""))
                    if "/calls?" in r.url else None)  # fmt: skip
            await page.goto(f"{http}/#token={token}")
            ws = http.replace("http://", "ws://")
            await replay(CALL, url=f"{ws}/twilio/media", auth_token=TOKEN, call_sid=call_sid, speed=0)
            await page.locator(f"#calls li[data-sid='{call_sid}']").click(timeout=15000)
            await page.locator(".notice", has_text="Call ended").wait_for(timeout=20000)
            assert await page.locator(".line.final").count() >= 28
            assert listed and set(listed) == {f"Bearer {token}"}
            assert all(token not in u for u in urls) and token not in page.url
        finally:
            await browser.close()
