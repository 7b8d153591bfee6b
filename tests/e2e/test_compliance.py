"""Done when (#13, compliance): replayed calls go through the bridge (embedded recognizer) and the batch
worker; the call whose agent never mentions recording is listed by ``GET /compliance?failed=true`` with
the rule and its evidence, the one whose agent does is ``passed``, and the caller's "supervisor"
reaches a live WebSocket subscriber as an ``alert`` event."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import httpx
from websockets.asyncio.client import connect

from bridge.batch.engine import make_engine
from bridge.batch.worker import Worker
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.store import Store, client_from_url
from bridge.twilio.replay import replay
from tests.support import FIXTURES

TOKEN = "compliance-e2e-token"
DISCLOSED = FIXTURES / "sets" / "eval" / "p03_card.wav"  # "Just so you know, this call may be recorded."
UNDISCLOSED = FIXTURES / "sets" / "eval" / "p04_no_disclosure.wav"  # "...I want to speak to a supervisor."
SID_DISCLOSED = "CA" + "d1" * 16
SID_UNDISCLOSED = "CA" + "d0" * 16


async def _live_events(ws_base: str, client: httpx.AsyncClient, call_sid: str) -> list[dict[str, object]]:
    """Subscribe as soon as the call exists and collect its live events until it ends."""
    async with asyncio.timeout(120):
        for _ in range(2400):
            if (await client.get(f"/calls/{call_sid}")).status_code == 200:
                break
            await asyncio.sleep(0.05)
        got: list[dict[str, object]] = []
        async with connect(f"{ws_base}/calls/{call_sid}/live") as ws:
            async for message in ws:
                got.append(json.loads(message))
                if got[-1]["type"] == "call_ended":
                    return got
    return got


async def test_failing_calls_are_listed_with_evidence_and_alerts_reach_live_subscribers(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="embedded", embedded_model="tiny.en",
    )  # fmt: skip
    redis = client_from_url(redis_url)
    store = Store(redis, prefix=redis_prefix, retention_seconds=3600)
    worker = Worker(store, make_engine("whisper", model="tiny.en"), block_ms=200, recording_dir=tmp_path)
    stop = asyncio.Event()
    try:
        async with running_bridge(settings) as (_app, http), httpx.AsyncClient(base_url=http, timeout=30) as client:
            ws = http.replace("http://", "ws://")
            media = f"{ws}/twilio/media"
            await replay(DISCLOSED, url=media, auth_token=TOKEN, call_sid=SID_DISCLOSED, speed=0)
            subscriber = asyncio.create_task(_live_events(ws, client, SID_UNDISCLOSED))
            await replay(UNDISCLOSED, url=media, auth_token=TOKEN, call_sid=SID_UNDISCLOSED, speed=2)
            live = await asyncio.wait_for(subscriber, 120)
            running = asyncio.create_task(worker.run(stop))
            reports = {}
            async with asyncio.timeout(240):  # the worker takes both jobs as soon as the calls have ended
                while len(reports) < 2:
                    for sid in (SID_DISCLOSED, SID_UNDISCLOSED):
                        r = await client.get(f"/calls/{sid}/compliance")
                        assert r.status_code in (200, 404)
                        if r.status_code == 200:
                            reports[sid] = r.json()
                    await asyncio.sleep(0.2)
            failing = (await client.get("/compliance", params={"failed": "true"})).json()["calls"]
            every = (await client.get("/compliance")).json()["calls"]
            subtitles = await client.get(f"/calls/{SID_UNDISCLOSED}/transcript", params={"format": "vtt",
                                                                                        "source": "batch"})
            stop.set()
            await asyncio.wait_for(running, 60)
    finally:
        stop.set()
        await redis.aclose()

    alerts = [e for e in live if e["type"] == "alert"]
    assert [a["rule"] for a in alerts] == ["supervisor"], live
    assert alerts[0]["track"] == "inbound" and "supervisor" in str(alerts[0]["text"]).lower()
    final_ids = {e["id"]: e["seq"] for e in live if e["type"] == "final"}
    assert final_ids[alerts[0]["final_id"]] == alerts[0]["seq"]  # the alert names the final it is about

    assert [c["call_sid"] for c in failing] == [SID_UNDISCLOSED]
    (rule,) = failing[0]["rules"]
    assert rule["id"] == "recording_disclosure" and rule["passed"] is False
    assert rule["evidence"] and all(e["track"] == "outbound" and e["start"] < 30 for e in rule["evidence"])
    assert "summit bank" in " ".join(e["text"] for e in rule["evidence"]).lower()
    assert {c["call_sid"]: c["passed"] for c in every} == {SID_DISCLOSED: True, SID_UNDISCLOSED: False}

    passed = reports[SID_DISCLOSED]
    assert passed["passed"] is True
    (disclosure,) = [r for r in passed["rules"] if r["id"] == "recording_disclosure"]
    assert disclosure["passed"] and "record" in disclosure["evidence"][0]["text"].lower()
    assert [a["rule"] for a in reports[SID_UNDISCLOSED]["alerts"]] == ["supervisor"]
    assert subtitles.status_code == 200 and subtitles.text.startswith("WEBVTT\n\n1\n00:00:0")
    assert "<v Agent>" in subtitles.text and "<v Caller>" in subtitles.text
