"""``/try`` in a real browser: Debian's chromium driven by Playwright, its microphone playing a fixture.

Chromium's fake capture device plays a WAV in a loop (``--use-file-for-fake-audio-capture``); the page
captures it with its AudioWorklet, the bridge transcribes it with the embedded recognizer (Whisper
tiny.en), and the page shows the words. The fixture is three spoken sentences converted to what
Chromium reads (16-bit PCM, 48 kHz) in ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from bridge.audio import mulaw_to_float, read_wav
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.store import Keys, RecordingJob, Store, client_from_url
from bridge.testing import ScriptedDeepgramServer
from tests.support import FIXTURES

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # fmt: skip
CLIPS = ["00", "03", "12"]  # three sentences of one voice, 1 s of silence after each

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium: run deploy/system-deps.sh")


def speech_wav(directory: Path) -> tuple[Path, set[str]]:
    """The fixture as a 48 kHz 16-bit PCM WAV Chromium plays as its microphone, and its words."""
    texts = {c["file"]: c["text"] for c in json.loads((FIXTURES / "audio" / "clips.json").read_text())}
    parts, words = [], set()
    for clip in CLIPS:
        wav = read_wav(FIXTURES / "audio" / "clips" / f"{clip}.wav")
        parts += [mulaw_to_float(wav.data), np.zeros(8000, dtype=np.float32)]
        words |= {w for w in re.findall(r"[a-z]+", texts[f"clips/{clip}.wav"].lower()) if len(w) > 4}
    audio = np.concatenate(parts)
    t8 = np.arange(len(audio)) / 8000
    t48 = np.arange(len(audio) * 6) / 48000
    pcm = (np.clip(np.interp(t48, t8, audio), -1, 1) * 32000).astype("<i2")
    path = directory / "speech.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(pcm.tobytes())
    return path, words


#: A partial showing one of the fixture's words is on the page.
SPEAKING = (
    "words => { const e = document.querySelector('.line.partial .text');"
    " return e && words.some(w => e.textContent.toLowerCase().includes(w)); }"
)


def heard(text: str, words: set[str]) -> set[str]:
    return words & set(re.findall(r"[a-z]+", text.lower()))


async def test_try_page_transcribes_the_microphone_and_a_commit_closes_the_sentence_once(
    redis_url: str, redis_prefix: str, tmp_path: Path, store: Store
) -> None:
    from playwright.async_api import async_playwright

    fixture, words = speech_wav(tmp_path)
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, recording_dir=tmp_path / "rec",
        recognizer="embedded", embedded_model="tiny.en", embedded_final_model="", embedded_workers=1,
    )  # fmt: skip
    (tmp_path / "rec").mkdir()
    async with running_bridge(settings) as (_app, http), async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=[*FLAGS, f"--use-file-for-fake-audio-capture={fixture}"]
        )
        try:
            page = await browser.new_page()
            # A long endpoint: the sentences' pauses do not close segments, the commit does.
            await page.goto(f"{http}/try?autostart=1&endpointing=2000")
            await page.wait_for_function("() => document.body.dataset.callSid", timeout=30000)
            call_sid = await page.evaluate("document.body.dataset.callSid")
            assert re.fullmatch(r"CA[0-9a-f]{32}", call_sid)

            # Partials first: the words show up, provisional, while the sentence is being spoken.
            await page.wait_for_function(SPEAKING, arg=sorted(words), timeout=60000)
            assert await page.locator(".line.final").count() == 0  # nothing closed a segment yet

            # A commit mid-sentence: the page's button, the bridge's POST /calls/{sid}/commit.
            async with page.expect_response(lambda r: r.url.endswith("/commit")) as response:
                await page.locator("#commit").click()
            answer = await (await response.value).json()
            assert (await response.value).status == 200, answer
            at = answer["at"]
            committed = page.locator(".line.final .text").first
            await committed.wait_for(timeout=60000)
            first = heard(await committed.inner_text(), words)
            assert first

            # The speaker goes on: a new segment (partials of words not in the first final), closed by
            # Stop with the call.
            await page.wait_for_function(SPEAKING, arg=sorted(words - first), timeout=60000)
            await page.locator("#stop").click()
            await page.locator(".notice", has_text="Call ended").wait_for(timeout=60000)
            assert await page.locator("#error").is_hidden()
            shown = " ".join(await page.locator(".line.final .text").all_inner_texts())
            await page.screenshot(path=str(tmp_path / "try.png"))

            # Start again: a new call, the last one's transcript cleared; Stop ends it.
            await page.locator("#start").click()
            await page.wait_for_function("sid => (document.body.dataset.callSid || sid) !== sid", arg=call_sid)
            assert await page.locator(".notice").count() == 0
            await page.locator("#stop").click()
            await page.locator(".notice", has_text="Call ended").wait_for(timeout=60000)
        finally:
            await browser.close()

        async with httpx.AsyncClient(base_url=http) as client:
            listed = (await client.get("/calls")).json()
            transcript = (await client.get(f"/calls/{call_sid}/transcript")).json()
    [call] = [c for c in listed if c["call_sid"] == call_sid]
    assert call["extra"]["source"] == "browser"
    assert call["status"] == "ended" and call["tracks"] == ["inbound"]
    assert call["finals"] == len(transcript) >= 2
    assert len(heard(shown, words)) >= 2
    assert " ".join(f["text"] for f in transcript) == shown  # what the page showed is what was stored
    # The commit's final: exactly one stored final ends where the commit closed the segment.
    assert len([f for f in transcript if abs(f["end"] - at) < 0.001]) == 1
    assert len({f["id"] for f in transcript}) == len(transcript)

    recording = tmp_path / "rec" / f"{call_sid}.wav"
    assert read_wav(recording).duration > at
    client = client_from_url(redis_url)
    try:
        entries = await client.xrange(Keys(redis_prefix).recordings)
    finally:
        await client.aclose()
    jobs = [RecordingJob.from_fields(f) for _id, f in entries]
    assert [j.tracks for j in jobs if j.call_sid == call_sid] == [["inbound"]]


@pytest.mark.parametrize(
    ("flags", "permissions", "secret", "message"),
    [
        # No fake device: the box has no microphone.
        (["--use-fake-ui-for-media-stream"], None, "", "No microphone found"),
        # A microphone, but the user says no (the context grants nothing).
        (["--use-fake-device-for-media-stream"], [], "", "Microphone permission denied"),
        # The bridge wants a capture token and the page has none: the close code and reason, in words.
        (["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"], None, "try-secret",
         "The server refused the capture (4401: missing capture token (bridge token --capture))"),
    ],
)  # fmt: skip
async def test_try_page_says_what_went_wrong(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer, store: Store,
    flags: list[str], permissions: list[str] | None, secret: str, message: str,
) -> None:  # fmt: skip
    from playwright.async_api import async_playwright

    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, recording_dir=tmp_path,
        recognizer="deepgram", recognizer_url=scripted.url, subscriber_secret=secret,
    )  # fmt: skip
    async with running_bridge(settings) as (_app, http), async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*FLAGS[:4], *flags])
        try:
            context = await browser.new_context(permissions=permissions)
            page = await context.new_page()
            await page.goto(f"{http}/try?autostart=1")
            error = page.locator("#error")
            await error.wait_for(state="visible", timeout=20000)
            assert (await error.inner_text()).startswith(message)
            assert await page.locator("#start").is_enabled()  # the user can try again
            assert await page.locator("#commit").is_disabled()
        finally:
            await browser.close()

