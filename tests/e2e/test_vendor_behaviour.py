"""Vendor behaviour through the whole bridge (issue 19): Deepgram's ingest limit after an outage, and
audio it cannot decode. Calls are played on a real-time schedule (the fake takes at most 1.25x real
time), so the outage is scaled down ten times: 3 s against a 2 s catch-up budget, as 30 s against
the default 20 s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from bridge import events
from bridge.recognizers.deepgram.live import DEEPGRAM_INGEST_RATE
from bridge.recognizers.resilience import RetryPolicy
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer, TwilioStream, scripted_finals

TOKEN = "vendor-token"
BPS = 8000
pytestmark = pytest.mark.timeout(120)


def _speech(seconds: float, seed: int) -> bytes:
    rnd = random.Random(seed)
    return bytes(rnd.randrange(0, 255) for _ in range(int(seconds * BPS)))


def _settings(redis_url: str, prefix: str, tmp_path: Path, recognizer_url: str) -> Settings:
    return dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=recognizer_url,
    )  # fmt: skip


async def _play_realtime(stream: TwilioStream, audio: bytes) -> None:
    """Twilio's pace: a 20 ms frame every 20 ms, on a fixed schedule."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i in range(0, len(audio), 160):
        delay = began + i / BPS - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await stream.media("inbound", i // 8, audio[i : i + 160])


async def _subscribe(ws_base: str, call_sid: str, received: list[events.LiveEvent]) -> None:
    for _ in range(200):  # the call appears with its stream's start
        try:
            async with websockets.connect(f"{ws_base}/calls/{call_sid}/live") as sub:
                async for raw in sub:
                    event = events.decode(raw)
                    received.append(event)
                    if isinstance(event, events.CallEnded):
                        return
        except websockets.ConnectionClosedError:
            await asyncio.sleep(0.025)


async def _ended(client: httpx.AsyncClient, call_sid: str) -> dict[str, Any]:
    for _ in range(400):
        info = await client.get(f"/calls/{call_sid}")
        if info.status_code == 200 and info.json()["status"] == "ended":
            return dict(info.json())
        await asyncio.sleep(0.025)
    raise AssertionError("the call never ended")


def _metric(text: str, name: str) -> float:
    return next((float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)


async def test_after_a_30s_outage_the_live_transcript_is_current_within_the_catchup_budget(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    audio = _speech(6.5, 19)
    policy = RetryPolicy(keepalive_interval=0.25, backoff_base=0.05, backoff_cap=0.1, max_failures=100,
                         catchup_seconds=2.0)  # fmt: skip
    call_sid = "CA" + "19" * 16
    async with ScriptedDeepgramServer(ingest_rate=DEEPGRAM_INGEST_RATE) as scripted:
        settings = _settings(redis_url, redis_prefix, tmp_path, scripted.url)
        async with (
            running_bridge(settings, retry_policy=policy) as (_app, http),
            httpx.AsyncClient(base_url=http, timeout=10) as client,
        ):
            async with TwilioStream(http.replace("http", "ws") + "/twilio/media", call_sid, auth_token=TOKEN) as tw:
                player = asyncio.create_task(_play_realtime(tw, audio))
                await scripted.wait_for_audio(int(1.5 * BPS))
                await scripted.stop()  # 3 s down while the caller keeps talking
                await asyncio.sleep(3.0)
                await scripted.start()
                await player
                await tw.stop()
            info = await _ended(client, call_sid)
            rows = (await client.get(f"/calls/{call_sid}/transcript")).json()
            stored = [(f["start"], f["end"], f["text"]) for f in rows]
            metrics = (await client.get("/metrics")).text
    first, second = scripted.connections
    skip_to = len(audio) - len(second.audio)
    assert bytes(second.audio) == audio[skip_to:]
    # Replayed: the newest 2 s x (1.25 - 1) = 0.5 s, never faster than Deepgram takes it, so the
    # transcript is current again 0.5 / 0.25 = 2 s (the budget) after the reconnect at the latest.
    assert _metric(metrics, "bridge_recognizer_replayed_seconds_total") == pytest.approx(0.5)
    assert scripted.throttled_seconds == 0
    # Every final once: the first window before the outage, then everything from the replay on.
    before = [(0.0, 1.0, scripted_finals(audio)[0][2])]
    offset = skip_to / BPS
    after = [(round(offset + s, 3), round(offset + e, 3), w) for s, e, w in scripted_finals(audio[skip_to:])]
    assert stored == before + after
    # The call record says what was not transcribed live (the batch pass has it: the recording is whole).
    assert info["gaps"] == {"inbound": [{"start": 1.0, "end": skip_to / BPS, "reason": "catchup"}]}
    assert _metric(metrics, "bridge_recognizer_skipped_audio_seconds_total") == pytest.approx(skip_to / BPS - 1.0)
    assert info["served"] == {"inbound": [{"recognizer": "deepgram", "start": 0.0, "end": 6.5}]}
    assert len(first.audio) >= 1.5 * BPS


async def test_undecodable_audio_fails_the_track_at_once_with_a_clear_status(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    scripted.refuse_audio()  # what Deepgram does with a wrong encoding or sample rate
    call_sid = "CA" + "da" * 16
    settings = _settings(redis_url, redis_prefix, tmp_path, scripted.url)
    received: list[events.LiveEvent] = []
    async with running_bridge(settings) as (_app, http), httpx.AsyncClient(base_url=http, timeout=10) as client:
        subscriber = asyncio.create_task(_subscribe(http.replace("http", "ws"), call_sid, received))
        async with TwilioStream(http.replace("http", "ws") + "/twilio/media", call_sid, auth_token=TOKEN) as tw:
            for i in range(0, 2 * BPS, 160):
                await tw.media("inbound", i // 8, _speech(0.02, i))
            await tw.stop()
        info = await _ended(client, call_sid)
        await asyncio.wait_for(subscriber, 10)
        metrics = (await client.get("/metrics")).text
    assert len(scripted.connections) == 1, "a rejection was retried"
    failed = [e for e in received if isinstance(e, events.RecognizerStatus) and e.state == "failed"]
    assert failed and failed[0].recognizer == "deepgram" and "DATA-0000" in failed[0].detail
    assert "cannot decode the audio" in failed[0].detail
    assert info["recognizers"] == {"inbound": "failed"}
    assert info["gaps"] == {"inbound": [{"start": 0.0, "end": 2.0, "reason": "failed"}]}
    assert _metric(metrics, "bridge_recognizer_failures_total") == 1
    assert _metric(metrics, "bridge_recordings_enqueued_total") == 1  # the batch pass still gets the call
