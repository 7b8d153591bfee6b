"""Alert events reach live subscribers like finals do: live, in the snapshot right after their final,
once each, and not again for a subscriber that resumes after their final (WebSocket and SSE)."""

from __future__ import annotations

import asyncio

import httpx
from websockets.asyncio.client import connect

from bridge import events
from bridge.store import Store
from tests.live.test_live import final, recv, started
from tests.support.served import Serve
from tests.support.sse import read_sse

CALL = "CA" + "0" * 28 + "11fe"


def alert_of(f: events.Final, rule: str) -> events.Alert:
    return events.Alert(call_sid=f.call_sid, rule=rule, track=f.track, text=f.text, start=f.start, end=f.end,
                        final_id=f.id)  # fmt: skip


async def test_ws_gets_alerts_live_and_in_the_snapshot_once(store: Store, served: Serve) -> None:
    await started(store)
    first = final(0.0, "I want to cancel")
    await store.add_final(first)
    await store.add_alert(alert_of(first, "cancellation"))
    async with served() as srv, connect(f"{srv.ws}/calls/{CALL}/live") as ws:
        got = [await recv(ws), await recv(ws)]
        assert [(type(e).__name__, e.seq) for e in got] == [("Final", 1), ("Alert", 1)]
        second = final(1.0, "get me a supervisor")
        await store.add_final(second)
        await store.add_alert(alert_of(second, "supervisor"))
        await store.add_alert(alert_of(first, "cancellation"))  # a retry: not stored, not sent again
        got = [await recv(ws), await recv(ws)]
        assert [(type(e).__name__, e.seq) for e in got] == [("Final", 2), ("Alert", 2)]
        alert = got[1]
        assert isinstance(alert, events.Alert)
        assert (alert.rule, alert.track, alert.final_id, alert.text) == (
            "supervisor", "inbound", second.id, "get me a supervisor")  # fmt: skip
        await store.call_ended(CALL, ended_at=1100.0)
        assert isinstance(await recv(ws), events.CallEnded)


async def test_a_resumed_subscriber_gets_only_the_alerts_of_later_finals(store: Store, served: Serve) -> None:
    await started(store)
    finals = [final(float(i), f"cancel {i}") for i in range(3)]
    for f in finals:
        await store.add_final(f)
        await store.add_alert(alert_of(f, "cancellation"))
    await store.call_ended(CALL, ended_at=1100.0)
    async with served() as srv, connect(f"{srv.ws}/calls/{CALL}/live?after=1") as ws:
        got = [await recv(ws) for _ in range(5)]
    assert [(type(e).__name__, e.seq) for e in got] == [("Final", 2), ("Alert", 2), ("Final", 3), ("Alert", 3),
                                                        ("CallEnded", 3)]  # fmt: skip


async def test_an_alert_raced_by_the_snapshot_is_sent_once(store: Store) -> None:
    """Subscribed, then the snapshot read: an alert stored in between is in both; it is sent once."""
    from bridge.live.hub import Delivery, Hub

    await started(store)
    f = final(0.0, "lawyer")
    await store.add_final(f)
    await store.add_alert(alert_of(f, "lawyer"))
    hub = Hub(store)
    sub = hub.subscribe(CALL)  # not entered: only what the test offers arrives live
    (stored,) = await store.alerts(CALL)
    sub._offer(Delivery(stored))  # the live copy, queued before the snapshot was read
    sub._offer(Delivery(events.CallEnded(call_sid=CALL, seq=1, ended_at=9.0)))
    received: list[events.LiveEvent] = []
    async with asyncio.timeout(5):
        async for event in sub:
            received.append(event)
    assert [type(e).__name__ for e in received] == ["Final", "Alert", "CallEnded"]


async def test_sse_sends_alert_events_and_resume_skips_earlier_ones(store: Store, served: Serve) -> None:
    await started(store)
    first = final(0.0, "cancel please")
    await store.add_final(first)
    await store.add_alert(alert_of(first, "cancellation"))
    async with served() as srv, httpx.AsyncClient(base_url=srv.http) as client:
        async with client.stream("GET", f"/calls/{CALL}/events") as response:
            second = final(1.0, "my lawyer")
            await store.add_final(second)
            await store.add_alert(alert_of(second, "lawyer"))
            await store.call_ended(CALL, ended_at=1100.0)
            frames = await read_sse(response, until="call_ended")
        assert [(f.get("id"), f["event"]) for f in frames] == [("1", "final"), (None, "alert"), ("2", "final"),
                                                               (None, "alert"), (None, "call_ended")]  # fmt: skip
        assert events.decode(frames[3]["data"]) == (await store.alerts(CALL))[1]
        async with client.stream("GET", f"/calls/{CALL}/events", headers={"Last-Event-ID": "1"}) as response:
            frames = await read_sse(response, until="call_ended")
        assert [f["event"] for f in frames] == ["final", "alert", "call_ended"]
        assert '"rule":"lawyer"' in frames[1]["data"]


async def test_regression_an_alert_overtaking_its_final_is_sent_after_it(store: Store) -> None:
    """An alert published before its final reached this subscriber (the final went out before the
    subscription was live, or through another cluster node) used to be sent ahead of its final."""
    from bridge.live.hub import Delivery, Hub

    await started(store)
    hub = Hub(store)
    sub = hub.subscribe(CALL)  # not entered: only what the test offers arrives live
    received: list[events.LiveEvent] = []

    async def follow() -> None:
        async for event in sub:
            received.append(event)

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.1)  # the snapshot (no finals yet) is taken; it waits for live events
    f = final(0.0, "get me a lawyer")
    await store.add_final(f)
    await store.add_alert(alert_of(f, "lawyer"))
    (stored,) = await store.alerts(CALL)
    sub._offer(Delivery(stored))  # the alert arrives live; its final never does
    sub._offer(Delivery(events.CallEnded(call_sid=CALL, seq=1, ended_at=9.0)))
    async with asyncio.timeout(5):
        await follower
    assert [(type(e).__name__, e.seq) for e in received] == [("Final", 1), ("Alert", 1), ("CallEnded", 1)]
