"""End to end for the compliance pass: a replayed call's recording job is consumed by a worker, and the
bridge serves the batch transcript (caller and agent labelled, word timings) beside the live one."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import httpx

from bridge.batch.engine import make_engine
from bridge.batch.worker import Worker
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.store import Store, client_from_url
from bridge.twilio.replay import replay
from tests.support import SHORT_CALL as CALL

TOKEN = "batch-e2e-token"


async def test_replayed_call_gets_a_labelled_batch_transcript_and_a_quality_signal(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="embedded", embedded_model="tiny.en",
    )
    call_sid = "CA" + "ba" * 16
    redis = client_from_url(redis_url)
    store = Store(redis, prefix=redis_prefix, retention_seconds=3600)
    worker = Worker(store, make_engine("whisper", model="tiny.en"), block_ms=200, recording_dir=tmp_path)
    stop = asyncio.Event()
    try:
        async with running_bridge(settings) as (_app, http), httpx.AsyncClient(base_url=http, timeout=10) as client:
            ws = http.replace("http://", "ws://")
            await replay(CALL, url=f"{ws}/twilio/media", auth_token=TOKEN, call_sid=call_sid, speed=0)
            running = asyncio.create_task(worker.run(stop))
            batch = None
            for _ in range(600):  # the worker picks the job up as soon as the call has ended
                r = await client.get(f"/calls/{call_sid}/transcript", params={"source": "batch"})
                if r.status_code == 200:
                    batch = r.json()
                    break
                assert r.status_code == 404
                await asyncio.sleep(0.1)
            assert batch is not None, "no batch transcript"
            text = (await client.get(f"/calls/{call_sid}/transcript",
                                     params={"source": "batch", "format": "text"})).text
            quality = (await client.get(f"/calls/{call_sid}/quality")).json()
            stop.set()
            await asyncio.wait_for(running, 30)
    finally:
        stop.set()
        await redis.aclose()

    assert batch["call_sid"] == call_sid and batch["channels"] == 2
    speakers = {u["track"]: u["speaker"] for u in batch["utterances"]}
    assert set(speakers) == {"inbound", "outbound"}
    words = [w for u in batch["utterances"] for w in u["words"]]
    assert words and all(0 <= w["start"] <= w["end"] <= batch["duration"] + 0.1 for w in words)
    assert "password" in text.lower() and "Caller:" in text and "Agent:" in text
    assert quality["call_sid"] == call_sid and quality["wer"] is not None
    assert {t["track"] for t in quality["tracks"]} == {"inbound", "outbound"}
    assert (tmp_path / f"{call_sid}.batch.json").exists()
