"""Store against a real Redis: finals, call index, retention, live events, recording jobs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from bridge import events
from bridge.settings import Settings
from bridge.store import Store
from bridge.store.jobs import RecordingJob


def final(call_sid: str, track: events.Track, start: float, text: str, end: float | None = None) -> events.Final:
    return events.Final(
        call_sid=call_sid,
        id=events.final_id(track, start),
        track=track,
        start=start,
        end=start + 1.0 if end is None else end,
        text=text,
    )


async def test_final_stored_once_with_increasing_seq(store: Store) -> None:
    assert await store.add_final(final("CA1", "inbound", 0.5, "hello")) == 1
    assert await store.add_final(final("CA1", "outbound", 0.7, "hi there")) == 2
    # The same audio span again (a recognizer retry), even with other text: not stored twice.
    assert await store.add_final(final("CA1", "inbound", 0.5, "hello again")) is None
    assert await store.add_final(final("CA1", "inbound", 2.0, "how are you")) == 3

    stored = await store.finals("CA1")
    assert [(f.seq, f.text) for f in stored] == [(1, "hello"), (2, "hi there"), (3, "how are you")]
    assert [f.seq for f in await store.finals("CA1", after_seq=2)] == [3]
    assert await store.finals("CA1", after_seq=3) == []
    # seq is per call
    assert await store.add_final(final("CA2", "inbound", 0.5, "other call")) == 1
    info = await store.get_call("CA1")
    assert info is not None and info.finals == 3


async def test_final_seq_in_input_is_replaced(store: Store) -> None:
    f = final("CA1", "inbound", 1.0, "x")
    f.seq = 42
    assert await store.add_final(f) == 1
    assert (await store.finals("CA1"))[0].seq == 1


async def test_transcript_in_audio_order_across_tracks(store: Store) -> None:
    # Inserted out of audio order (the outbound recognizer lagged).
    await store.add_final(final("CA1", "inbound", 3.0, "third"))
    await store.add_final(final("CA1", "inbound", 1.0, "first"))
    await store.add_final(final("CA1", "outbound", 2.0, "second"))
    await store.add_final(final("CA1", "outbound", 3.0, "agent same time"))
    texts = [f.text for f in await store.transcript("CA1")]
    assert texts == ["first", "second", "third", "agent same time"]
    assert [f.seq for f in await store.finals("CA1")] == [1, 2, 3, 4]


async def test_add_final_publishes_with_seq(store: Store) -> None:
    async with store.subscribe("CA1") as live:
        await store.add_final(final("CA1", "inbound", 1.0, "hello"))
        await store.add_final(final("CA1", "inbound", 1.0, "hello"))  # duplicate: not published
        await store.publish(events.Partial(call_sid="CA1", seq=1, track="outbound", start=2, end=2.5, text="wh"))
        await store.add_final(final("CA1", "outbound", 2.0, "what"))
        await store.publish(events.Partial(call_sid="CA2", track="inbound", start=0, end=1, text="other"))
        got = []
        async with asyncio.timeout(5):
            async for event in live:
                got.append(event)
                if len(got) == 3:
                    break
    assert isinstance(got[0], events.Final) and got[0].seq == 1 and got[0].text == "hello"
    assert isinstance(got[1], events.Partial) and got[1].text == "wh"
    assert isinstance(got[2], events.Final) and got[2].seq == 2


async def test_call_started_keeps_state_and_collects_streams(store: Store) -> None:
    await store.update_call("CA1", {"call_status": "ringing"})  # status callback arrives first
    await store.call_started(
        "CA1", stream_sid="MZ1", tracks=["inbound"], started_at=100.0, account_sid="AC1",
        from_number="+15550001", to_number="+15550002", custom={"agent": "bob"},
    )  # fmt: skip
    await store.add_final(final("CA1", "inbound", 1.0, "hello"))
    await store.call_started("CA1", stream_sid="MZ2", tracks=["inbound", "outbound"], started_at=160.0)
    await store.set_recognizer_state("CA1", "inbound", "connected")
    info = await store.get_call("CA1")
    assert info is not None
    assert info.status == "active" and info.active
    assert info.started_at == 100.0
    assert info.stream_sids == ["MZ1", "MZ2"]
    assert info.tracks == ["inbound", "outbound"]
    assert info.from_number == "+15550001" and info.to_number == "+15550002"
    assert info.account_sid == "AC1"
    assert info.custom == {"agent": "bob"}
    assert info.recognizers == {"inbound": "connected"}
    assert info.extra == {"call_status": "ringing"}
    assert info.finals == 1
    assert len(await store.finals("CA1")) == 1
    assert await store.get_call("CA-unknown") is None


async def test_call_ended_moves_index_and_applies_retention(store: Store) -> None:
    now = time.time()
    await store.call_started("CA1", stream_sid="MZ1", tracks=["inbound"], started_at=now - 10)
    await store.call_started("CA2", stream_sid="MZ2", tracks=["inbound"], started_at=now - 5)
    await store.add_final(final("CA1", "inbound", 1.0, "hello"))
    held = [k for k in store.keys.call_keys("CA1") if await store.client.exists(k)]
    assert len(held) == 5  # metadata, streams, live streams, finals, final ids
    for key in held:
        assert await store.client.ttl(key) == -1  # no expiry while active

    async with store.subscribe("CA1") as live:
        await store.call_ended("CA1", ended_at=now, reason="completed")
        async with asyncio.timeout(5):
            ended = await anext(aiter(live))
    assert isinstance(ended, events.CallEnded)
    assert ended.reason == "completed" and ended.seq == 1 and ended.duration == pytest.approx(10, abs=0.01)

    for key in held:
        assert 0 < await store.client.ttl(key) <= store.retention_seconds
    info = await store.get_call("CA1")
    assert info is not None and info.status == "ended" and info.ended_at == now
    assert info.end_reason == "completed"
    assert [c.call_sid for c in await store.list_calls(active=True)] == ["CA2"]
    assert [c.call_sid for c in await store.list_calls(active=False)] == ["CA1"]
    assert [c.call_sid for c in await store.list_calls()] == ["CA2", "CA1"]
    assert [c.call_sid for c in await store.list_calls(limit=1)] == ["CA2"]

    # A late final of an ended call shares the call's retention.
    await store.add_final(final("CA1", "inbound", 5.0, "late"))
    assert 0 < await store.client.ttl(store.keys.finals("CA1")) <= store.retention_seconds


async def test_recent_index_trimmed_by_age(store: Store) -> None:
    old = time.time() - store.retention_seconds - 100
    await store.call_started("CAold", stream_sid="MZ1", tracks=["inbound"], started_at=old - 10)
    await store.call_ended("CAold", ended_at=old)
    await store.call_started("CAnew", stream_sid="MZ2", tracks=["inbound"], started_at=time.time())
    await store.call_ended("CAnew", ended_at=time.time())
    assert [c.call_sid for c in await store.list_calls(active=False)] == ["CAnew"]


async def test_call_restarted_after_end_is_active_again(store: Store) -> None:
    await store.call_started("CA1", stream_sid="MZ1", tracks=["inbound"], started_at=100.0)
    await store.call_ended("CA1", ended_at=200.0)
    await store.call_started("CA1", stream_sid="MZ2", tracks=["inbound"], started_at=300.0)
    info = await store.get_call("CA1")
    assert info is not None and info.active and info.started_at == 100.0 and info.ended_at == 0.0
    assert await store.client.ttl(store.keys.call("CA1")) == -1
    assert [c.call_sid for c in await store.list_calls(active=True)] == ["CA1"]
    assert await store.list_calls(active=False) == []


async def test_recording_job_is_a_flat_stream_entry(store: Store) -> None:
    job = RecordingJob(
        call_sid="CA1", path="/var/recordings/CA1.wav", channels=2, tracks=["inbound", "outbound"],
        duration=12.5, created_at=1700000000.25,
    )  # fmt: skip
    entry_id = await store.enqueue_recording(job)
    entries: Any = await store.client.xrange(store.keys.recordings)
    assert len(entries) == 1
    got_id, fields = entries[0]
    assert got_id.decode() == entry_id
    assert {k.decode(): v.decode() for k, v in fields.items()} == {
        "call_sid": "CA1",
        "path": "/var/recordings/CA1.wav",
        "format": "wav",
        "encoding": "mulaw",
        "sample_rate": "8000",
        "channels": "2",
        "tracks": "inbound,outbound",
        "duration": "12.5",
        "created_at": "1700000000.25",
        "source": "stream",
        "recording_url": "",
    }
    assert RecordingJob.from_fields(fields) == job


async def test_open_without_url_starts_embedded_redis(tmp_path: Path) -> None:
    settings = Settings(redis_url="", redis_prefix="emb", retention_seconds=60)
    store = await Store.open(settings, embedded_dir=tmp_path / "redis")
    try:
        assert store.url.startswith("unix://")
        assert await store.ping()
        assert await store.add_final(final("CA1", "inbound", 0.0, "hi")) == 1
    finally:
        await store.close()
    assert not (tmp_path / "redis" / "redis.sock").exists()


async def test_redactions_round_trip_and_share_the_call_retention(store: Store) -> None:
    from bridge.transcripts import Redaction

    sid = "CA" + "7" * 32
    assert await store.redactions(sid) is None
    spans = [Redaction(track="inbound", start=1.0, end=4.5, kind="card_number")]
    await store.save_redactions(sid, spans)
    assert await store.redactions(sid) == spans
    assert store.keys.redactions(sid) in store.keys.call_keys(sid)
    assert await store.client.ttl(store.keys.redactions(sid)) > 0
