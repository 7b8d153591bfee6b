"""Redis Cluster layout: which keys share a slot, and the fan-out hub's pub/sub on a real cluster.

Every other store test runs on the cluster too (``tests/store/conftest.py``), where a transaction or a
script that spans two slots fails with CROSSSLOT.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

from bridge import events
from bridge.live.hub import Hub
from bridge.store import Store
from bridge.store.keys import Keys


def _slots(*names: str) -> set[int]:
    return {key_slot(name.encode()) for name in names}


def test_each_call_lives_in_one_slot_and_the_indexes_in_their_own() -> None:
    k = Keys("P")
    calls = ["CA" + c * 32 for c in "0123456789abcdef"]
    per_call = [_slots(*k.call_keys(sid)) for sid in calls]
    assert all(len(slots) == 1 for slots in per_call)
    assert len(set().union(*per_call)) > 1, "calls spread over the cluster"
    assert k.call(calls[0]) == "P:call:{" + calls[0] + "}"
    index = _slots(k.active_calls, k.recent_calls, k.flagged_calls)
    jobs = _slots(k.recordings, k.recordings_dead, k.recordings_attempts, k.recordings_retry)
    assert len(index) == 1 and len(jobs) == 1 and index != jobs


def test_a_prefix_cannot_break_the_hash_tags() -> None:
    with pytest.raises(ValueError, match="braces"):
        Keys("team{a}")


async def test_a_transaction_across_two_calls_is_refused_by_the_cluster(cluster_store: Store) -> None:
    """The check the store tests rely on: the cluster does refuse what a single server would run."""
    k = cluster_store.keys
    a, b = "CA" + "1" * 32, "CA" + "2" * 32
    assert _slots(k.call(a)) != _slots(k.call(b))
    with pytest.raises((ResponseError, RedisClusterException)):
        async with cluster_store.client.pipeline(transaction=True) as tx:
            tx.hset(k.call(a), "x", "1")
            tx.hset(k.call(b), "x", "1")
            await tx.execute()


async def test_the_hub_hears_calls_stored_through_any_node(cluster_store: Store) -> None:
    """Finals published by the finals script on whichever node owns the call reach the hub's pub/sub."""
    hub = Hub(cluster_store)
    await hub.start()
    try:
        calls = ["CA" + c * 32 for c in "3456"]  # four calls: more than one node owns them
        assert len(_slots(*(cluster_store.keys.call(s) for s in calls))) > 1
        for sid in calls:
            await cluster_store.call_started(sid, stream_sid="MZ1", tracks=["inbound"], started_at=1.0)
        seen: dict[str, list[int]] = {}

        async def follow(sid: str) -> None:
            async with hub.subscribe(sid) as sub:
                async for event in sub:
                    if isinstance(event, events.Final):
                        seen.setdefault(sid, []).append(event.seq)
                    if isinstance(event, events.CallEnded):
                        return

        followers = [asyncio.create_task(follow(sid)) for sid in calls]
        await asyncio.sleep(0.2)  # subscribed: what follows arrives live
        for i in range(3):
            for sid in calls:
                final = events.Final(call_sid=sid, id=events.final_id("inbound", float(i)), track="inbound",
                                     start=float(i), end=i + 1.0, text=f"w{i}")  # fmt: skip
                assert await cluster_store.add_final(final) == i + 1
        for sid in calls:
            await cluster_store.call_ended(sid, ended_at=9.0)
        async with asyncio.timeout(10):
            await asyncio.gather(*followers)
        assert seen == {sid: [1, 2, 3] for sid in calls}
        assert hub.channel_count == 0
    finally:
        await hub.stop()
