"""The worker and the erasure and webhook features (issue #13), on Redis and on a Redis Cluster:
``batch.completed`` (and ``compliance.failed`` for a failing report) is queued once the result is
stored (the same event id when the job runs again), and the job of an erased call is dropped unrun."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis

from bridge.batch.worker import Worker
from bridge.retry import Backoff
from bridge.store import Store
from bridge.store.jobs import RecordingJob
from bridge.store.keys import Keys
from bridge.webhooks import WebhookEvent
from tests.batch.conftest import FakeEngine
from tests.support import SHORT_CALL

SID = "CA" + "b7" * 16
URL = "http://127.0.0.1:9/hook"


def _worker(redis: aioredis.Redis, keys: Keys, engine: FakeEngine) -> Worker:
    store = Store(redis, prefix=keys.prefix, retention_seconds=3600)
    return Worker(store, engine, consumer="w1", block_ms=50, backoff=Backoff(0.0, 0.0), webhook_urls=(URL,))


async def _enqueue(worker: Worker, path: Path) -> None:
    job = RecordingJob(call_sid=SID, path=str(path), channels=2, tracks=["inbound", "outbound"], duration=14.8)
    assert await worker.store.enqueue_recording(job)


async def _webhooks(redis: aioredis.Redis, keys: Keys) -> list[WebhookEvent]:
    entries: Any = await redis.xrange(keys.webhooks)
    return [msgspec.json.decode(fields[b"body"], type=WebhookEvent) for _id, fields in entries]


async def test_batch_completed_is_queued_with_one_id_however_often_the_job_runs(
    redis: aioredis.Redis, keys: Keys, tmp_path: Path
) -> None:
    wav = tmp_path / f"{SID}.wav"
    shutil.copy(SHORT_CALL, wav)
    engine = FakeEngine()
    worker = _worker(redis, keys, engine)
    await _enqueue(worker, wav)
    await _enqueue(worker, wav)  # the same recording queued twice (e.g. redelivered)
    assert await worker.process_one() and await worker.process_one()
    assert engine.calls == 1
    sent = await _webhooks(redis, keys)
    batch = [e for e in sent if e.type == "batch.completed"]
    assert len(batch) == 2 and batch[0].id == batch[1].id and batch[0].call_sid == SID  # receivers see one event
    data = msgspec.json.decode(batch[0].data)
    assert data["engine"] == "fake" and data["utterances"] == 2 and data["flagged"] is False
    # The fake transcript has no recording disclosure: the default rules fail it, once per id too.
    failed = [e for e in sent if e.type == "compliance.failed"]
    assert len(failed) == 2 and failed[0].id == failed[1].id
    report = msgspec.json.decode(failed[0].data)
    assert report["passed"] is False and "recording_disclosure" in {r["id"] for r in report["rules"] if not r["passed"]}
    assert {e.type for e in sent} == {"batch.completed", "compliance.failed"}


async def test_the_job_of_an_erased_call_is_dropped_unrun(redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    wav = tmp_path / f"{SID}.wav"
    shutil.copy(SHORT_CALL, wav)
    engine = FakeEngine()
    worker = _worker(redis, keys, engine)
    await _enqueue(worker, wav)
    await redis.set(keys.tombstone(SID), "1")  # erased after its job was queued
    assert await worker.process_one()
    assert engine.calls == 0
    assert await redis.exists(keys.batch_transcript(SID)) == 0 and not (tmp_path / f"{SID}.batch.json").exists()
    assert await redis.xlen(keys.recordings) == 0  # the entry is gone, not just acked
    assert await _webhooks(redis, keys) == []
    assert worker.metrics.registry.get_sample_value("bridge_batch_jobs_total", {"outcome": "erased"}) == 1
