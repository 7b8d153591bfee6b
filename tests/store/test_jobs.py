"""``JobQueue``: the recording jobs stream and its consumer group, on a real Redis."""

from __future__ import annotations

import time
from typing import Any

import pytest

from bridge.store import Store
from bridge.store.jobs import Backlog, JobQueue, RecordingJob, entry_time


def _job(sid: str = "CA1") -> RecordingJob:
    return RecordingJob(call_sid=sid, path=f"/rec/{sid}.wav", channels=2, tracks=["inbound", "outbound"], duration=3.5)


async def _pending(store: Store) -> int:
    info: Any = await store.client.xpending(store.keys.recordings, store.keys.recordings_group)
    return int(info["pending"])


async def test_a_job_round_trips_as_flat_string_fields(store: Store) -> None:
    entry = await store.jobs.enqueue(_job())
    got = await store.jobs.next("w1", block_ms=10, claim_idle_ms=60_000)
    assert got is not None
    (entry_id, fields), claimed = got
    assert entry_id == entry and not claimed
    assert all(isinstance(v, str) for v in fields.values())  # any language can consume it
    job = RecordingJob.from_fields(fields)
    assert (job.call_sid, job.tracks, job.channels, job.duration) == ("CA1", ["inbound", "outbound"], 2, 3.5)
    assert await _pending(store) == 1
    await store.jobs.ack(entry_id)
    assert await _pending(store) == 0
    assert await store.jobs.next("w1", block_ms=10, claim_idle_ms=60_000) is None


async def test_a_failed_job_comes_back_when_due_and_then_dies(store: Store) -> None:
    q: JobQueue = store.jobs
    entry = await q.enqueue(_job())
    assert await q.next("w1", block_ms=10, claim_idle_ms=60_000) is not None
    assert await q.failed(entry) == 1
    await q.retry_at(entry, time.time() + 3600)
    assert await q.next("w2", block_ms=10, claim_idle_ms=0) is None  # waiting out its backoff: not claimed
    await q.retry_at(entry, time.time() - 1)
    got = await q.next("w2", block_ms=10, claim_idle_ms=60_000)
    assert got is not None and got[0][0] == entry  # due: handed to any consumer
    assert await q.failed(entry) == 2
    await q.dead_letter(entry, got[0][1], "WavError: not a RIFF/WAVE file", attempts=2, consumer="w2")
    assert await _pending(store) == 0
    [(_, dead)] = await q.dead_letters()
    assert dead["job_id"] == entry and dead["attempts"] == "2" and dead["consumer"] == "w2"
    assert dead["call_sid"] == "CA1" and "RIFF" in dead["reason"]
    assert not await store.client.exists(store.keys.recordings_attempts)


async def test_an_idle_job_is_claimed_and_a_heartbeat_keeps_it(store: Store) -> None:
    q = store.jobs
    entry = await q.enqueue(_job())
    assert await q.next("dead-worker", block_ms=10, claim_idle_ms=60_000) is not None
    await q.heartbeat(entry, "dead-worker")
    assert await q.next("w2", block_ms=10, claim_idle_ms=60_000) is None  # alive: not taken over
    await q.release(entry, "dead-worker", idle_ms=60_000)  # looks idle for a minute now
    got = await q.next("w2", block_ms=10, claim_idle_ms=60_000)
    assert got is not None and got[0][0] == entry and got[1] is True


async def test_the_backlog_counts_waiting_and_pending_jobs_and_ages_the_oldest(store: Store) -> None:
    q = store.jobs
    assert await q.backlog() == Backlog(queued=0, pending=0, oldest_seconds=0.0, dead=0)  # no stream yet
    first, second, third = [await q.enqueue(_job(f"CA{i}")) for i in range(3)]
    t0 = entry_time(first)
    # No worker ever started (no group): all three wait since the first was queued.
    assert await q.backlog(now=t0 + 100) == Backlog(queued=3, pending=0, oldest_seconds=100.0, dead=0)

    got = await q.next("w1", block_ms=10, claim_idle_ms=60_000)
    assert got is not None and got[0][0] == first
    assert await q.backlog(now=t0 + 100) == Backlog(queued=2, pending=1, oldest_seconds=100.0, dead=0)

    await q.ack(first)
    backlog = await q.backlog(now=t0 + 100)
    assert (backlog.queued, backlog.pending) == (2, 0)
    assert backlog.oldest_seconds == pytest.approx(t0 + 100 - entry_time(second))

    # A job that failed for good leaves the backlog for the dead letters.
    got = await q.next("w1", block_ms=10, claim_idle_ms=60_000)
    assert got is not None
    await q.dead_letter(second, got[0][1], "bad", attempts=5, consumer="w1")
    backlog = await q.backlog(now=t0 + 100)
    assert (backlog.queued, backlog.pending, backlog.dead) == (1, 0, 1)
    assert backlog.oldest_seconds == pytest.approx(t0 + 100 - entry_time(third))

    got = await q.next("w1", block_ms=10, claim_idle_ms=60_000)
    assert got is not None
    await q.ack(third)
    assert await q.backlog(now=t0 + 100) == Backlog(queued=0, pending=0, oldest_seconds=0.0, dead=1)


async def test_the_backlog_is_counted_when_entries_were_deleted_unread(store: Store) -> None:
    q = store.jobs
    ids = [await q.enqueue(_job(f"CA{i}")) for i in range(4)]
    got = await q.next("w1", block_ms=10, claim_idle_ms=60_000)
    assert got is not None
    await q.ack(ids[0])
    await store.client.xdel(store.keys.recordings, ids[2])  # an operator removed a job nobody read yet
    backlog = await q.backlog(now=entry_time(ids[0]) + 60)
    assert (backlog.queued, backlog.pending) == (2, 0)
    assert backlog.oldest_seconds == pytest.approx(entry_time(ids[0]) + 60 - entry_time(ids[1]))
