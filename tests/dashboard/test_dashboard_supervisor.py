"""The agent-assist page tried as a supervisor would, in Debian's chromium driven by Playwright.

A call is replayed through a running bridge with the page open: it appears in the calls list and live,
partials settle into finals, auto-scroll pauses while the supervisor reads further up, an alert is
highlighted on its line, a search finds the call by a phrase said in it, the batch transcript shows
beside the live one with its differences marked, keyboard focus reaches every control, and an
expired token shows its message and stops the page asking. A call of real speech goes through the
embedded recognizer, the shipped alert rules and the batch pass: its alert phrase is highlighted live
and its review shows the compliance result; after the batch pass the redacted recording plays with
the word being played highlighted. Screenshots land in the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge import events, transcripts
from bridge.live import auth
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.store import Store, client_from_url
from bridge.testing import ScriptedDeepgramServer
from bridge.twilio.replay import replay

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
CALL = Path(__file__).resolve().parents[2] / "fixtures" / "calls" / "short_call.wav"
#: Real speech: "...I want to speak to a supervisor."; the agent never says the call is recorded.
UNDISCLOSED = CALL.parents[1] / "sets" / "eval" / "p04_no_disclosure.wav"
TWILIO_TOKEN = "supervisor-twilio-token"
SECRET = "supervisor-secret"
PARTIES = {"From": "+15551230001", "To": "+15559870002"}

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium: run deploy/system-deps.sh")


def bridge_settings(redis_url: str, redis_prefix: str, tmp_path: Path, recognizer_url: str) -> Settings:
    return dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TWILIO_TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=recognizer_url, subscriber_secret=SECRET,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def chromium(width: int = 1280, height: int = 800) -> AsyncIterator[Any]:
    """A page in a fresh headless chromium (never a downloaded browser). On the way out, the page must
    have thrown no uncaught error and broken no rule of its Content-Security-Policy."""
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = await browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)
            page = await context.new_page()
            page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
            page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
            yield page
        finally:
            await browser.close()
    assert errors == []


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    client = client_from_url(settings.redis_url)
    try:
        yield Store(client, prefix=settings.redis_prefix, retention_seconds=settings.retention_seconds)
    finally:
        await client.aclose()


def start_call(http: str, call_sid: str, speed: float, path: Path = CALL) -> asyncio.Task[Any]:
    ws = http.replace("http://", "ws://")
    return asyncio.create_task(replay(path, url=f"{ws}/twilio/media", auth_token=TWILIO_TOKEN, call_sid=call_sid,
                                      speed=speed, custom_parameters=PARTIES))  # fmt: skip


async def live_finals(http: str, token: str, call_sid: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=http, headers={"Authorization": f"Bearer {token}"}) as client:
        r = await client.get(f"/calls/{call_sid}/transcript", params={"format": "json"})
        r.raise_for_status()
        finals: list[dict[str, Any]] = r.json()
        return finals


def batch_from(call_sid: str, finals: list[dict[str, Any]], replace: dict[str, str]) -> transcripts.BatchTranscript:
    """A batch transcript saying what the live one did, except the finals in ``replace`` (id -> word)."""
    utterances = []
    for f in finals:
        word = replace.get(f["id"], f["text"])
        utterances.append(transcripts.Utterance(
            id=f["id"], track=f["track"], channel=0 if f["track"] == "inbound" else 1, speaker=f["track"],
            start=f["start"], end=f["end"], text=word,
            words=[events.Word(word=word, start=f["start"], end=f["end"])],
        ))  # fmt: skip
    return transcripts.BatchTranscript(call_sid=call_sid, engine="test", model="copy", duration=15.0, channels=2,
                                       tracks=["inbound", "outbound"], utterances=utterances)  # fmt: skip


# The focused element as tag#id.class[data-track or data-format], e.g. "button.export[vtt]".
_FOCUSED = """() => {
  const e = document.activeElement;
  if (!e || e === document.body) return 'body';
  const cls = e.className ? '.' + e.className.split(' ')[0] : '';
  const data = e.dataset.track || e.dataset.format;
  return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + cls + (data ? '[' + data + ']' : '');
}"""


async def tab_through(page: Any, presses: int = 80) -> list[str]:
    """What keyboard focus lands on, Tab after Tab, from the top of the page."""
    await page.evaluate("document.activeElement && document.activeElement.blur()")
    seen = []
    for _ in range(presses):
        await page.keyboard.press("Tab")
        seen.append(await page.evaluate(_FOCUSED))
    return seen


async def test_a_supervisor_follows_a_call_live_finds_it_by_a_phrase_and_reviews_it(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    settings = bridge_settings(redis_url, redis_prefix, tmp_path, scripted.url)
    call_sid = "CA" + "5a" * 16
    token = auth.mint(SECRET, ["*"], 600)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    async with running_bridge(settings) as (_app, http), open_store(settings) as store, chromium(1200, 640) as page:
        urls: list[str] = []
        page.on("request", lambda r: urls.append(r.url))
        page.on("websocket", lambda ws: urls.append(ws.url))
        await page.goto(f"{http}/#token={token}")
        player = start_call(http, call_sid, speed=1.0)  # real time: the steps below happen while it is live
        # The calls list: live, with who calls whom.
        entry = page.locator(f"#calls li[data-sid='{call_sid}']")
        await entry.wait_for(timeout=15000)
        assert await entry.locator(".state").inner_text() == "LIVE"  # text-transform: uppercase
        assert "+15551230001 → +15559870002" in await entry.inner_text()
        await entry.locator("button").click()
        # Partials are provisional (italic) and settle into finals in place.
        style = await page.wait_for_function(
            "() => { const e = document.querySelector('.line.partial .text');"
            " return e && e.isConnected && getComputedStyle(e).fontStyle; }", timeout=15000)  # fmt: skip
        assert await style.json_value() == "italic"
        first = page.locator(".line.final").first
        await first.wait_for(timeout=15000)
        # An alert on a final that is on screen: the line is highlighted and the alert listed.
        final_id = await first.get_attribute("data-id")
        text = await first.locator(".text").inner_text()
        track = "inbound" if "inbound" in (await first.get_attribute("class") or "") else "outbound"
        await store.publish(events.Alert(call_sid=call_sid, rule="no-card-numbers", track=track, text=text,
                                         start=0.0, end=1.0, final_id=final_id or ""))  # fmt: skip
        flagged = page.locator(f".line.final.alert[data-id='{final_id}']")
        await flagged.wait_for(timeout=15000)
        assert "no-card-numbers" in await flagged.locator(".rule").inner_text()
        assert "no-card-numbers" in await page.locator("#alerts").inner_text()
        await page.locator("#conn[data-state='live']").wait_for(timeout=5000)
        # Reading further up pauses auto-scroll; new lines offer a jump back instead.
        await page.wait_for_function("() => { const t = document.getElementById('transcript');"
                                     " return t.scrollHeight > t.clientHeight + 100; }", timeout=15000)  # fmt: skip
        await page.evaluate("() => { const t = document.getElementById('transcript'); t.scrollTop = 0;"
                            " t.dispatchEvent(new Event('scroll')); }")  # fmt: skip
        await page.locator("#jump").wait_for(state="visible", timeout=20000)
        assert await page.evaluate("document.getElementById('transcript').scrollTop") < 50
        await page.screenshot(path=str(shots / "live.png"))
        await player
        await page.locator(".notice", has_text="Call ended").wait_for(timeout=20000)
        await page.locator("#jump").click()
        assert await page.evaluate("() => { const t = document.getElementById('transcript');"
                                   " return t.scrollTop + t.clientHeight >= t.scrollHeight - 2; }")  # fmt: skip
        await page.locator("#alerts button", has_text="no-card-numbers").click()  # back to the alert's line
        assert await page.evaluate("document.activeElement.dataset.id") == final_id
        assert await page.locator(".line.final").count() >= 28
        assert await page.locator(".line.partial").count() == 0
        assert await page.locator(".line.final.inbound .who").first.inner_text() == "Caller"
        assert await page.locator(".line.final.outbound .who").first.inner_text() == "Agent"
        await page.locator(f"#calls li[data-sid='{call_sid}'] .state", has_text="Ended").wait_for(timeout=15000)

        # Search: two words the caller said one after the other (two finals), as a phrase.
        finals = await live_finals(http, token, call_sid)
        caller = [f for f in finals if f["track"] == "inbound"]
        phrase = f"{caller[3]['text']} {caller[4]['text']}"
        await page.locator("input[type=search]").fill(phrase.upper())
        await page.locator("input[type=search]").press("Enter")
        result = page.locator(f"#search-results li[data-sid='{call_sid}']")
        await result.wait_for(timeout=15000)
        assert await result.locator("mark").count() == 2
        # The batch pass "ran": its transcript differs from the live one in one word.
        texts = [f["text"] for f in finals]
        changed = next(f for f in caller if texts.count(f["text"]) == 1)
        await store.save_batch_result(
            batch_from(call_sid, finals, {changed["id"]: "refund"}),
            transcripts.CallQuality(call_sid=call_sid, wer=0.036, tracks=[], flagged=False, threshold=0.2,
                                    live_finals=len(finals)),
        )  # fmt: skip
        await page.screenshot(path=str(shots / "search.png"))
        await result.locator("button").click()
        found = page.locator(".line.final.found")
        await found.wait_for(timeout=15000)
        assert caller[3]["text"] in await found.inner_text()
        # After the call: batch beside live, the one differing word marked on each side, the WER shown.
        await page.locator("#batch-col .w").first.wait_for(timeout=30000)
        assert await page.locator("#live-col .only-live").all_inner_texts() == [changed["text"]]
        assert await page.locator("#batch-col .only-batch").all_inner_texts() == ["refund"]
        assert "3.6 %" in await page.locator("#quality").inner_text()
        await page.locator("#review").scroll_into_view_if_needed()
        await page.screenshot(path=str(shots / "review.png"), full_page=True)
        # Exports come down as files, fetched with the token in a header.
        async with page.expect_download() as download_info:
            await page.locator("#exports button[data-format='text']").click()
        download = await download_info.value
        assert download.suggested_filename == f"{call_sid}.txt"
        saved = shots.parent / "export.txt"
        await download.save_as(saved)
        assert saved.read_text().splitlines()[0] == f"Caller: {finals[0]['text']}"
        assert all(token not in url for url in urls) and token not in page.url

        # Keyboard only: focus reaches the search box, the calls, the transcript and the review's controls.
        seen = await tab_through(page)
        for control in ("input#q", "button.open-call", "div#transcript", "button.export[vtt]"):
            assert control in seen, (control, seen)
        assert seen.index("input#q") < seen.index("button.open-call") < seen.index("div#transcript")
        await page.locator("#transcript").focus()
        await page.keyboard.press("/")  # back to the search box from anywhere
        assert await page.evaluate("document.activeElement.id") == "q"


async def test_commit_buttons_post_the_track_while_the_call_is_live(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """The page side of ``POST /calls/{sid}/commit``: one button per track, the body names the track."""
    settings = bridge_settings(redis_url, redis_prefix, tmp_path, scripted.url)
    call_sid = "CA" + "5b" * 16
    token = auth.mint(SECRET, ["*"], 600)
    async with running_bridge(settings) as (_app, http), chromium() as page:
        posted: list[tuple[str, str, str]] = []
        page.on("request", lambda r: posted.append((r.url, r.post_data or "", r.headers.get("authorization", "")))
                if r.method == "POST" else None)  # fmt: skip
        await page.goto(f"{http}/#token={token}")
        player = start_call(http, call_sid, speed=1.0)
        await page.locator(f"#calls li[data-sid='{call_sid}'] button").click(timeout=15000)
        button = page.locator("#commit button[data-track='outbound']")
        await button.wait_for(state="visible", timeout=15000)
        assert await page.locator("#commit button[data-track='inbound']").inner_text() == "Commit caller"
        await button.click()
        await page.locator(".commit-note", has_text="Agent committed").wait_for(timeout=10000)
        assert posted == [(f"{http}/calls/{call_sid}/commit", '{"track":"outbound"}', f"Bearer {token}")]
        player.cancel()
        with contextlib.suppress(BaseException):
            await player


async def test_an_expired_token_shows_its_message_and_the_page_backs_off(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """The token expires while the page is open: the list, search and the review all say so, and the
    page stops asking instead of retrying in a loop."""
    settings = bridge_settings(redis_url, redis_prefix, tmp_path, scripted.url)
    token = auth.mint(SECRET, ["*"], 2)
    async with running_bridge(settings) as (_app, http), chromium(390, 800) as page:  # a phone's width
        listed: list[float] = []
        page.on("request", lambda r: listed.append(time.monotonic()) if "/calls?" in r.url else None)
        await page.goto(f"{http}/#token={token}")
        banner = page.locator("#auth")
        await banner.wait_for(state="visible", timeout=20000)
        assert "Access denied (401: token expired)" in await banner.inner_text()
        assert "fresh link" in await banner.inner_text()
        await page.locator("input[type=search]").fill("anything")
        await page.locator("input[type=search]").press("Enter")
        await page.locator("#search-results .error", has_text="token was not accepted").wait_for(timeout=10000)
        await page.screenshot(path=str(tmp_path / "expired.png"))
        refused_at = len(listed)
        await page.wait_for_timeout(4000)  # polling every 3 s would have asked again by now; backed off, it waits 6 s
        assert len(listed) - refused_at <= 1
        assert token not in page.url


async def test_a_lost_connection_shows_reconnecting_and_the_page_comes_back_by_itself(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """The bridge the page talks to goes away mid-call and comes back on the same address."""
    settings = bridge_settings(redis_url, redis_prefix, tmp_path, scripted.url)
    call_sid = "CA" + "5e" * 16
    token = auth.mint(SECRET, ["*"], 600)
    async with open_store(settings) as store:
        await store.call_started(call_sid, stream_sid="MZ" + "5e" * 16, tracks=["inbound", "outbound"],
                                 started_at=time.time())  # fmt: skip
        await store.add_final(events.Final(call_sid=call_sid, id=events.final_id("inbound", 0.0), track="inbound",
                                           start=0.0, end=1.0, text="still there"))  # fmt: skip
    async with chromium() as page:
        async with running_bridge(settings) as (_app, http):
            port = int(http.rsplit(":", 1)[1])
            await page.goto(f"{http}/?call={call_sid}#token={token}")
            await page.locator("#conn[data-state='live']").wait_for(timeout=15000)
            await page.locator(".line.final", has_text="still there").wait_for(timeout=15000)
        conn = page.locator("#conn[data-state='reconnecting']")
        await conn.wait_for(timeout=15000)
        assert "Reconnecting in" in await conn.inner_text()
        await page.screenshot(path=str(tmp_path / "reconnecting.png"))
        async with running_bridge(dataclasses.replace(settings, port=port)), open_store(settings) as store:
            await page.locator("#conn[data-state='live']").wait_for(timeout=60000)
            await store.add_final(events.Final(call_sid=call_sid, id=events.final_id("inbound", 1.0), track="inbound",
                                               start=1.0, end=2.0, text="back again"))  # fmt: skip
            await page.locator(".line.final", has_text="back again").wait_for(timeout=15000)
            assert await page.locator(".line.final").count() == 2  # resumed after the last final: no duplicate
            await store.call_ended(call_sid, ended_at=time.time(), reason="stop")


async def test_on_a_phone_the_list_and_the_call_take_turns(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    settings = bridge_settings(redis_url, redis_prefix, tmp_path, scripted.url)
    call_sid = "CA" + "5f" * 16
    token = auth.mint(SECRET, ["*"], 600)
    async with open_store(settings) as store:
        await store.call_started(call_sid, stream_sid="MZ" + "5f" * 16, tracks=["inbound", "outbound"],
                                 started_at=time.time() - 90, from_number="+15551230001")  # fmt: skip
        for i, (track, said) in enumerate([("inbound", "Hello, my card was declined at the store today."),
                                           ("outbound", "I am sorry to hear that, let me check your account.")]):
            await store.add_final(events.Final(call_sid=call_sid, id=events.final_id(track, float(i)), track=track,
                                               start=float(i), end=i + 1.0, text=said))  # fmt: skip
        await store.call_ended(call_sid, ended_at=time.time(), reason="stop")
    async with running_bridge(settings) as (_app, http), chromium(390, 800) as page:
        await page.goto(f"{http}/#token={token}")
        await page.locator(f"#calls li[data-sid='{call_sid}'] button").click(timeout=15000)
        await page.locator(".line.final.outbound").wait_for(timeout=15000)
        assert not await page.locator("aside").is_visible()
        assert not await page.locator("#commit").is_visible()  # nothing to commit on an ended call
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
        await page.screenshot(path=str(tmp_path / "phone.png"))
        await page.locator("#back").click()
        await page.locator(f"#calls li[data-sid='{call_sid}'] button").wait_for(state="visible", timeout=5000)
        assert not await page.locator("#call").is_visible()
        # Searching from the call view shows the results; one opens the call at the line.
        await page.locator(f"#calls li[data-sid='{call_sid}'] button").click()
        await page.locator("input[type=search]").fill("card was declined")
        await page.locator("input[type=search]").press("Enter")
        result = page.locator(f"#search-results li[data-sid='{call_sid}'] button")
        await result.wait_for(state="visible", timeout=10000)
        await result.click()
        await page.locator(".line.final.found", has_text="declined").wait_for(state="visible", timeout=10000)


async def test_a_real_call_raises_an_alert_live_and_its_review_shows_the_compliance_result(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Real speech through the embedded recognizer and the shipped rules: the caller's "I want to speak
    to a supervisor" is highlighted as it is said; after the batch pass (Whisper) the review shows the
    failed recording disclosure with its evidence, the list says "non-compliant", the subtitles
    download and the redacted recording plays with the current word highlighted."""
    from bridge.batch.engine import make_engine
    from bridge.batch.worker import Worker

    settings = dataclasses.replace(
        bridge_settings(redis_url, redis_prefix, tmp_path, ""), recognizer="embedded", embedded_model="tiny.en"
    )
    call_sid = "CA" + "5c" * 16
    token = auth.mint(SECRET, ["*"], 600)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    stop = asyncio.Event()
    async with running_bridge(settings) as (_app, http), open_store(settings) as store, chromium() as page:
        await page.goto(f"{http}/#token={token}")
        player = start_call(http, call_sid, speed=2.0, path=UNDISCLOSED)
        await page.locator(f"#calls li[data-sid='{call_sid}'] button").click(timeout=60000)
        flagged = page.locator(".line.final.inbound.alert")
        await flagged.wait_for(timeout=120000)
        assert "supervisor" in await flagged.locator(".rule").inner_text()
        said = await flagged.locator(".text").inner_text()
        assert "supervisor" in said.lower()
        assert "supervisor" in await page.locator("#alerts").inner_text()
        assert await page.locator(f"#calls li[data-sid='{call_sid}'] .badge.alert").inner_text() == "1 alert"
        await page.screenshot(path=str(shots / "alert.png"))
        await player
        await page.locator(".notice", has_text="Call ended").wait_for(timeout=60000)

        # Search finds the call by the words the caller said before "supervisor".
        words = [w.strip(".,!?").lower() for w in said.split()]
        at = next(i for i, w in enumerate(words) if w.startswith("supervisor"))
        phrase = " ".join(words[max(0, at - 2) : at + 1])
        await page.locator("input[type=search]").fill(phrase)
        await page.locator("input[type=search]").press("Enter")
        await page.locator(f"#search-results li[data-sid='{call_sid}'] button").click(timeout=15000)
        # Reopened, the call's stored alert is highlighted again, and counted once.
        await page.locator(".line.final.inbound.alert.found").wait_for(timeout=15000)
        await page.locator("#alerts", has_text="supervisor").wait_for(timeout=5000)
        assert await page.locator(f"#calls li[data-sid='{call_sid}'] .badge.alert").inner_text() == "1 alert"

        worker = Worker(store, make_engine("whisper", model="tiny.en"), block_ms=200, recording_dir=tmp_path)
        running = asyncio.create_task(worker.run(stop))
        try:
            verdict = page.locator("#compliance .verdict")
            await verdict.wait_for(timeout=240000)
            assert await verdict.inner_text() == "Not compliant"
            disclosure = page.locator("#compliance .rule-result.fail", has_text="recording_disclosure")
            assert await disclosure.locator(".evidence li").count() >= 1
            assert "Agent" in await disclosure.locator(".evidence li").first.inner_text()
            await page.locator("#batch-col .w").first.wait_for(timeout=30000)
            assert "WER" in await page.locator("#quality").inner_text()
            badge = page.locator(f"#calls li[data-sid='{call_sid}'] .badge.compliance")
            await badge.wait_for(timeout=40000)  # the list asks for verdicts every 15 s
            assert await badge.inner_text() == "non-compliant"
            async with page.expect_download() as download_info:
                await page.locator("#exports button[data-format='vtt']").click()
            saved = tmp_path / "export.vtt"
            await (await download_info.value).save_as(saved)
            assert saved.read_text().startswith("WEBVTT")
            # The redacted recording plays, the batch word being played highlighted.
            await page.locator("#player").wait_for(state="visible", timeout=40000)
            await page.evaluate("() => { const a = document.getElementById('recording'); a.muted = true;"
                                " a.currentTime = 4.5; return a.play(); }")  # fmt: skip
            await page.locator("#batch-col .w.current").wait_for(timeout=30000)
            await page.evaluate("document.getElementById('recording').pause()")
            await page.locator("#review").scroll_into_view_if_needed()
            await page.screenshot(path=str(shots / "compliance.png"))
        finally:
            stop.set()
            await asyncio.wait_for(running, 60)


async def test_after_the_batch_pass_the_recording_plays_with_the_current_word_highlighted(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    from bridge.batch.engine import make_engine
    from bridge.batch.worker import Worker

    settings = bridge_settings(redis_url, redis_prefix, tmp_path, scripted.url)
    call_sid = "CA" + "5d" * 16
    token = auth.mint(SECRET, ["*"], 600)
    stop = asyncio.Event()
    async with running_bridge(settings) as (_app, http), open_store(settings) as store, chromium() as page:
        await start_call(http, call_sid, speed=0)  # first: loading the model blocks the loop for a moment
        worker = Worker(store, make_engine("whisper", model="tiny.en"), block_ms=200, recording_dir=tmp_path)
        running = asyncio.create_task(worker.run(stop))
        try:
            await page.goto(f"{http}/?call={call_sid}#token={token}")
            await page.locator("#batch-col .w").first.wait_for(timeout=180000)  # the batch pass ran
            # The redacted recording, fetched with the token and played from a Blob URL.
            await page.locator("#player").wait_for(state="visible", timeout=40000)
            assert (await page.locator("#player audio").get_attribute("src") or "").startswith("blob:")
            await page.evaluate("() => { const a = document.getElementById('recording'); a.muted = true;"
                                " return a.play(); }")  # fmt: skip
            await page.locator("#batch-col .w.current").wait_for(timeout=30000)
            assert await page.evaluate("document.getElementById('recording').currentTime") > 0
            await page.screenshot(path=str(tmp_path / "recording.png"), full_page=True)
        finally:
            stop.set()
            await asyncio.wait_for(running, 60)
