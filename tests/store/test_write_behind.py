"""FinalsWriter across a real Redis outage: a dedicated redis server is stopped and restarted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge import events
from bridge.retry import Backoff
from bridge.store import FinalsWriter, Store, client_from_url
from bridge.store.redis_embedded import EmbeddedRedis, free_port


def final(start: float, text: str) -> events.Final:
    return events.Final(
        call_sid="CA1", id=events.final_id("inbound", start), track="inbound", start=start,
        end=start + 0.5, text=text,
    )  # fmt: skip


def partial(start: float) -> events.Partial:
    return events.Partial(call_sid="CA1", track="inbound", start=start, end=start + 0.2, text="...")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    # A fixed port, so the restarted server is reachable at the same URL; persistent, so it keeps data.
    srv = EmbeddedRedis(tmp_path / "redis", port=free_port(), persist=True)
    await asyncio.to_thread(srv.start)
    try:
        yield srv
    finally:
        await asyncio.to_thread(srv.stop)


@pytest.fixture
async def outage_store(server: EmbeddedRedis) -> AsyncIterator[Store]:
    client = client_from_url(server.url)
    yield Store(client, prefix="wb", retention_seconds=60)
    await client.aclose()


async def test_finals_survive_outage_in_order_once(server: EmbeddedRedis, outage_store: Store) -> None:
    writer = FinalsWriter(outage_store, backoff=Backoff(0.02, 0.2))
    writer.start()
    writer.submit(final(0.0, "one"))
    assert await writer.flush(5)

    await asyncio.to_thread(server.stop)
    writer.submit(final(1.0, "two"))
    writer.publish(partial(1.5))
    writer.submit(final(2.0, "three"))
    writer.submit(final(2.0, "three"))  # a duplicate submit stays one final
    writer.publish(partial(2.5))
    # Nothing can be written while Redis is down; submitting did not block.
    assert not await writer.flush(0.3)
    assert writer.redis_down
    assert writer.pending >= 2

    await asyncio.to_thread(server.start)
    assert await writer.flush(10)
    assert not writer.redis_down
    assert writer.pending == 0
    assert writer.dropped == 0
    assert writer.dropped_ephemeral >= 1  # partials are not worth keeping across an outage

    stored = await outage_store.finals("CA1")
    assert [(f.seq, f.text) for f in stored] == [(1, "one"), (2, "two"), (3, "three")]
    await writer.aclose()


async def test_memory_bound_drops_and_counts(server: EmbeddedRedis, outage_store: Store) -> None:
    writer = FinalsWriter(outage_store, max_pending=3, backoff=Backoff(0.02, 0.1))
    writer.start()
    await asyncio.to_thread(server.stop)
    for i in range(5):
        writer.submit(final(float(i), f"f{i}"))
    assert writer.dropped == 2
    assert writer.pending == 3
    await asyncio.to_thread(server.start)
    assert await writer.flush(10)
    assert [f.text for f in await outage_store.finals("CA1")] == ["f0", "f1", "f2"]
    await writer.aclose()


async def test_call_writes_go_through_writer(outage_store: Store) -> None:
    writer = FinalsWriter(outage_store)
    writer.call("CA1", "call_started", lambda: outage_store.call_started(
        "CA1", stream_sid="MZ1", tracks=["inbound"], started_at=1.0))  # fmt: skip
    writer.submit(final(0.0, "hello"))
    writer.call("CA1", "call_ended", lambda: outage_store.call_ended("CA1", ended_at=5.0))
    assert await writer.flush(5)
    info = await outage_store.get_call("CA1")
    assert info is not None and info.status == "ended" and info.finals == 1
    await writer.aclose()


async def test_queued_partials_go_out_in_one_round_trip_in_order_between_finals(outage_store: Store) -> None:
    """Partials that queued up behind a write are published together (one pipeline), in submit order,
    and never overtake the final queued before or after them."""
    rounds: list[int] = []
    publish_many = outage_store.publish_many

    async def counting(batch: list[events.LiveEvent]) -> None:
        rounds.append(len(batch))
        await publish_many(batch)

    outage_store.publish_many = counting  # type: ignore[method-assign]
    writer = FinalsWriter(outage_store)
    async with outage_store.subscribe("CA1") as live:
        writer.submit(final(0.0, "one"))  # the writer task has not run yet: everything below queues
        for i in range(10):
            writer.publish(partial(1.0 + i))
        writer.submit(final(20.0, "two"))
        writer.publish(partial(21.0))
        writer.start()
        assert await writer.flush(5)
        got = [await asyncio.wait_for(anext(live), 5) for _ in range(13)]
    kinds = [(type(e).__name__, e.start) for e in got]
    assert kinds == [("Final", 0.0), *[("Partial", 1.0 + i) for i in range(10)], ("Final", 20.0), ("Partial", 21.0)]
    assert rounds == [10]  # the lone partial after the last final went alone
    assert writer.written == 13
    await writer.aclose()
