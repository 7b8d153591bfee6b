"""The batch worker against a real Redis: delivery, claiming, retries, dead letters, idempotence."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bridge import transcripts
from bridge.batch.whisper import WhisperBatchEngine
from bridge.batch.worker import Worker
from bridge.events import Final, final_id
from bridge.retry import Backoff
from bridge.store import Store
from bridge.store.jobs import RecordingJob
from bridge.store.keys import Keys
from tests.batch.conftest import FakeEngine
from tests.support import SHORT_CALL, eventually

CALL = SHORT_CALL


def _store(redis: aioredis.Redis, keys: Keys) -> Store:
    return Store(redis, prefix=keys.prefix, retention_seconds=3600)


def _worker(redis: aioredis.Redis, keys: Keys, engine: Any, name: str, **kw: Any) -> Worker:
    opts: dict[str, Any] = {"block_ms": 50, "claim_idle_ms": 60_000, "backoff": Backoff(0.0, 0.0)}
    opts.update(kw)
    return Worker(_store(redis, keys), engine, consumer=name, **opts)


async def _enqueue(redis: aioredis.Redis, keys: Keys, path: Path, call_sid: str = "CA1") -> str:
    store = Store(redis, prefix=keys.prefix, retention_seconds=3600)
    job = RecordingJob(call_sid=call_sid, path=str(path), channels=2, tracks=["inbound", "outbound"], duration=14.8)
    return await store.enqueue_recording(job)


async def _pending(redis: aioredis.Redis, keys: Keys) -> int:
    info: Any = await redis.xpending(keys.recordings, keys.recordings_group)
    return int(info["pending"])


async def test_job_transcribed_and_stored(
    redis: aioredis.Redis, keys: Keys, tmp_path: Path, tiny_engine: WhisperBatchEngine
) -> None:
    wav = tmp_path / "CA1.wav"
    shutil.copy(CALL, wav)
    store = Store(redis, prefix=keys.prefix, retention_seconds=3600)
    # The live path heard the agent right and the caller partly wrong.
    for track, start, text in [("outbound", 0.5, "Customer support, how can I help?"),
                               ("inbound", 4.6, "I forgot my passport and cannot look in.")]:  # fmt: skip
        await store.add_final(Final(call_sid="CA1", id=final_id(track, start), track=track,  # type: ignore[arg-type]
                                    start=start, end=start + 3, text=text))  # fmt: skip
    await _enqueue(redis, keys, wav)
    worker = _worker(redis, keys, tiny_engine, "w1", wer_threshold=0.9)
    assert await worker.process_one() is True

    t = await _store(redis, keys).batch_transcript("CA1")
    assert t is not None and t.engine == "whisper" and t.model == "tiny.en"
    assert {(u.track, u.channel, u.speaker) for u in t.utterances} == {
        ("inbound", 0, "Caller"),
        ("outbound", 1, "Agent"),
    }
    for u in t.utterances:
        assert u.words and all(0 <= w.start <= w.end <= t.duration for w in u.words)
    assert "password" in t.text("inbound").lower() and "support" in t.text("outbound").lower()
    assert transcripts.decode_transcript((tmp_path / "CA1.batch.json").read_bytes()) == t

    q = await _store(redis, keys).quality("CA1")
    assert q is not None and q.live_finals == 2 and q.wer is not None
    by_track = {tq.track: tq for tq in q.tracks}
    assert by_track["inbound"].wer > 0 and by_track["inbound"].substitutions >= 2
    assert not q.flagged
    assert await _pending(redis, keys) == 0
    assert await worker.process_one() is False  # nothing left


async def test_divergent_live_transcript_is_flagged(redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    wav = tmp_path / "CA2.wav"
    shutil.copy(CALL, wav)
    store = Store(redis, prefix=keys.prefix, retention_seconds=3600)
    await store.add_final(Final(call_sid="CA2", id="inbound-1", track="inbound", start=1, end=2, text="goodbye now"))
    await _enqueue(redis, keys, wav, "CA2")
    worker = _worker(redis, keys, FakeEngine(), "w1", wer_threshold=0.3)
    assert await worker.process_one()
    q = await _store(redis, keys).quality("CA2")
    assert q is not None and q.flagged and q.wer is not None and q.wer > 0.3
    assert await _store(redis, keys).flagged_calls() == [("CA2", q.wer)]
    metrics = worker.metrics.registry
    assert metrics.get_sample_value("bridge_batch_flagged_calls_total") == 1
    assert metrics.get_sample_value("bridge_batch_jobs_total", {"outcome": "done"}) == 1


async def test_processed_twice_stores_one_result(redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    wav = tmp_path / "CA1.wav"
    shutil.copy(CALL, wav)
    engine = FakeEngine()
    await _enqueue(redis, keys, wav)
    await _enqueue(redis, keys, wav)  # e.g. the job was queued again after a retry upstream
    w = _worker(redis, keys, engine, "w1")
    assert await w.process_one() and await w.process_one()
    assert engine.calls == 1  # the second delivery saw the stored result and was only acked
    assert await redis.exists(keys.batch_transcript("CA1")) == 1
    assert w.metrics.registry.get_sample_value("bridge_batch_jobs_total", {"outcome": "duplicate"}) == 1
    assert await _pending(redis, keys) == 0


async def test_crashed_workers_job_is_claimed(redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    wav = tmp_path / "CA1.wav"
    shutil.copy(CALL, wav)
    entry = await _enqueue(redis, keys, wav)
    # A worker reads the job and dies before acking (no heartbeat, no release).
    await redis.xgroup_create(keys.recordings, keys.recordings_group, id="0", mkstream=True)
    got: Any = await redis.xreadgroup(keys.recordings_group, "dead-host:1", {keys.recordings: ">"}, count=1)
    assert got[0][1][0][0].decode() == entry
    engine = FakeEngine()
    survivor = _worker(redis, keys, engine, "live-host:2", claim_idle_ms=1)
    await asyncio.sleep(0.01)
    assert await survivor.process_one()
    assert engine.calls == 1 and await redis.exists(keys.batch_transcript("CA1")) == 1
    assert await _pending(redis, keys) == 0
    assert survivor.metrics.registry.get_sample_value("bridge_batch_jobs_claimed_total") == 1


async def test_worker_killed_mid_job(redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    wav = tmp_path / "CA1.wav"
    shutil.copy(CALL, wav)
    await _enqueue(redis, keys, wav)
    hanging = FakeEngine(hang=True)
    a = _worker(redis, keys, hanging, "host-a:1", claim_idle_ms=60_000)
    task = asyncio.create_task(a.process_one())
    await hanging.started.wait()
    task.cancel()  # killed mid-job: nothing was acked
    await asyncio.gather(task, return_exceptions=True)
    assert await _pending(redis, keys) == 1
    assert await redis.exists(keys.batch_transcript("CA1")) == 0

    engine = FakeEngine()
    b = _worker(redis, keys, engine, "host-b:2", claim_idle_ms=60_000)
    assert await b.process_one()  # released on cancel, so claimable at once despite the long idle timeout
    assert engine.calls == 1
    t = await _store(redis, keys).batch_transcript("CA1")
    assert t is not None and len(t.utterances) == 2
    assert await _pending(redis, keys) == 0


async def test_poisoned_recording_is_dead_lettered(redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    bad = tmp_path / "CA9.wav"
    bad.write_bytes(b"\x00\x01garbage" * 500)
    entry = await _enqueue(redis, keys, bad, "CA9")
    w = _worker(redis, keys, FakeEngine(), "w1", max_attempts=3)
    for _ in range(3):
        assert await w.process_one()
    dead: Any = await redis.xrange(keys.recordings_dead)
    assert len(dead) == 1
    fields = {k.decode(): v.decode() for k, v in dead[0][1].items()}
    assert fields["call_sid"] == "CA9" and fields["job_id"] == entry and fields["attempts"] == "3"
    assert "WavError" in fields["reason"] and "not a RIFF/WAVE file" in fields["reason"]
    assert await _pending(redis, keys) == 0
    assert await redis.exists(keys.batch_transcript("CA9")) == 0
    assert await w.process_one() is False
    assert w.metrics.registry.get_sample_value("bridge_batch_jobs_total", {"outcome": "retry"}) == 2


async def test_retry_waits_for_its_backoff(redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    missing = tmp_path / "later.wav"
    await _enqueue(redis, keys, missing, "CA3")
    w = _worker(redis, keys, FakeEngine(), "w1", backoff=Backoff(3600.0, 3600.0), claim_idle_ms=1)
    assert await w.process_one()  # fails: file not there yet
    assert await w.process_one() is False  # not due, and not taken for an abandoned job either
    waiting: Any = await redis.zrange(keys.recordings_retry, 0, -1)
    assert len(waiting) == 1
    shutil.copy(CALL, missing)
    await redis.zadd(keys.recordings_retry, {waiting[0]: 0})
    assert await w.process_one()  # due now: retried and succeeds
    assert await redis.exists(keys.batch_transcript("CA3")) == 1
    assert await redis.zcard(keys.recordings_retry) == 0 and await redis.hlen(keys.recordings_attempts) == 0


async def test_malformed_job_goes_straight_to_dead_letters(redis: aioredis.Redis, keys: Keys) -> None:
    await redis.xadd(keys.recordings, {"path": "/x.wav", "channels": "two"})
    w = _worker(redis, keys, FakeEngine(), "w1")
    assert await w.process_one()
    dead: Any = await redis.xrange(keys.recordings_dead)
    assert len(dead) == 1 and b"bad job" in dead[0][1][b"reason"]


async def test_stop_lets_the_job_in_hand_finish(redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    wav = tmp_path / "CA1.wav"
    shutil.copy(CALL, wav)
    await _enqueue(redis, keys, wav)
    engine = FakeEngine(hang=True)
    w = _worker(redis, keys, engine, "w1", grace_s=30.0)
    stop = asyncio.Event()
    runner = asyncio.create_task(w.run(stop))
    await engine.started.wait()
    stop.set()  # SIGTERM while a job is in hand
    engine.release.set()
    await runner
    assert await redis.exists(keys.batch_transcript("CA1")) == 1
    assert await _pending(redis, keys) == 0


async def test_stop_past_grace_releases_the_job(redis: aioredis.Redis, keys: Keys, tmp_path: Path) -> None:
    wav = tmp_path / "CA1.wav"
    shutil.copy(CALL, wav)
    await _enqueue(redis, keys, wav)
    engine = FakeEngine(hang=True)
    w = _worker(redis, keys, engine, "w1", grace_s=0.0)
    stop = asyncio.Event()
    runner = asyncio.create_task(w.run(stop))
    await engine.started.wait()
    stop.set()
    await runner
    assert await redis.exists(keys.batch_transcript("CA1")) == 0
    other = FakeEngine()
    assert await _worker(redis, keys, other, "w2").process_one()  # released: taken at once
    assert other.calls == 1 and await _pending(redis, keys) == 0


async def test_a_running_worker_exports_the_backlog_and_keeps_it_fresh(
    redis: aioredis.Redis, keys: Keys, tmp_path: Path
) -> None:
    for sid in ("CA1", "CA2"):
        wav = tmp_path / f"{sid}.wav"
        shutil.copy(CALL, wav)
        await _enqueue(redis, keys, wav, call_sid=sid)
    engine = FakeEngine(hang=True)
    w = _worker(redis, keys, engine, "w1", backlog_interval_s=0.05)
    registry = w.metrics.registry

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    stop = asyncio.Event()
    runner = asyncio.create_task(w.run(stop))
    try:
        await engine.started.wait()  # one job in hand, one never read
        await eventually(lambda: sample("bridge_batch_backlog_jobs", state="pending") == 1)
        assert sample("bridge_batch_backlog_jobs", state="queued") == 1
        assert (sample("bridge_batch_backlog_oldest_seconds") or 0) > 0
        assert sample("bridge_batch_dead_letters") == 0
        engine.release.set()
        await eventually(lambda: sample("bridge_batch_backlog_jobs", state="queued") == 0
                         and sample("bridge_batch_backlog_jobs", state="pending") == 0)  # fmt: skip
        assert sample("bridge_batch_backlog_oldest_seconds") == 0
    finally:
        stop.set()
        await runner
    assert engine.calls == 2
