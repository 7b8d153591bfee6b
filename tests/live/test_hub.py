"""The hub's ordering guarantees that do not depend on Redis delivering messages in order."""

from __future__ import annotations

import asyncio

import msgspec

from bridge import events
from bridge.live.hub import Delivery, Hub
from bridge.store import Store

CALL = "CA" + "7e" * 16


async def test_regression_call_ended_overtaking_its_finals_loses_none_of_them(store: Store) -> None:
    """On a Redis Cluster a call's finals are published by the node of its slot and its end by the
    node of the call index's slot: the end can arrive first. Its seq says how many finals exist."""
    hub = Hub(store)
    sub = hub.subscribe(CALL)  # not entered: nothing reaches it but what the test offers
    await store.call_started(CALL, stream_sid="MZ1", tracks=["inbound"], started_at=1.0)
    received: list[events.LiveEvent] = []

    async def follow() -> None:
        async for event in sub:
            received.append(event)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.1)  # the snapshot (no finals yet) is taken; it waits for live events
    for i in range(3):
        final = events.Final(call_sid=CALL, id=events.final_id("inbound", float(i)), track="inbound",
                             start=float(i), end=i + 1.0, text=f"w{i}")  # fmt: skip
        assert await store.add_final(final) == i + 1
    sub._offer(Delivery(events.CallEnded(call_sid=CALL, seq=3, ended_at=9.0, duration=8.0, reason="completed")))
    async with asyncio.timeout(5):
        await follower
    assert [(type(e).__name__, e.seq) for e in received] == [("Final", 1), ("Final", 2), ("Final", 3),
                                                             ("CallEnded", 3)]  # fmt: skip


async def test_a_live_event_is_decoded_and_encoded_once_for_all_its_subscribers(store: Store) -> None:
    hub = Hub(store)
    await hub.start()
    try:
        await store.call_started(CALL, stream_sid="MZ1", tracks=["inbound"], started_at=1.0)
        got: list[Delivery] = []

        async def follow(ready: asyncio.Event) -> None:
            async with hub.subscribe(CALL) as sub:
                async for delivery in sub.deliveries():
                    if isinstance(delivery.event, events.Partial):
                        ready.set()  # past the snapshot: what follows comes live
                    if isinstance(delivery.event, events.Final):
                        got.append(delivery)
                        return

        readies = [asyncio.Event() for _ in range(20)]
        followers = [asyncio.create_task(follow(r)) for r in readies]
        partial = events.Partial(call_sid=CALL, track="inbound", start=0.0, end=0.5, text="hel")
        async with asyncio.timeout(5):
            while not all(r.is_set() for r in readies):
                await store.publish(partial)
                await asyncio.sleep(0.05)
        final = events.Final(call_sid=CALL, id=events.final_id("inbound", 0.0), track="inbound", start=0.0,
                             end=1.0, text="hello")  # fmt: skip
        await store.add_final(final)
        async with asyncio.timeout(5):
            await asyncio.gather(*followers)
    finally:
        await hub.stop()
    assert len(got) == 20 and len({id(d) for d in got}) == 1  # one object: parsed once, its frames built once
    assert got[0].sse.startswith(b"id: 1\nevent: final\ndata: {") and got[0].text == got[0].data.decode()
    assert events.decode_final(got[0].data) == msgspec.structs.replace(final, seq=1)
