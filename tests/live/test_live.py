"""Live fan-out over real sockets: WebSocket and SSE, snapshot then live, resume, several instances."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridge import events
from bridge.store import Store, client_from_url
from tests.support import eventually
from tests.support.served import Serve
from tests.support.sse import read_sse

CALL = "CA" + "0" * 28 + "11fe"  # "live"


def final(start: float, text: str, track: events.Track = "inbound", call_sid: str = CALL) -> events.Final:
    return events.Final(
        call_sid=call_sid, id=events.final_id(track, start), track=track, start=start,
        end=start + 0.5, text=text,
    )  # fmt: skip


async def started(store: Store, call_sid: str = CALL) -> None:
    await store.call_started(call_sid, stream_sid="MZ1", tracks=["inbound", "outbound"], started_at=1000.0)


async def recv(ws: ClientConnection) -> events.LiveEvent:
    async with asyncio.timeout(5):
        return events.decode(await ws.recv())


async def close_of(ws: ClientConnection) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as info:
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


async def test_ws_snapshot_then_live_then_call_end(store: Store, served: Serve) -> None:
    await started(store)
    await store.add_final(final(0.0, "hello"))
    await store.add_final(final(1.0, "hi", "outbound"))
    async with served() as srv, connect(f"{srv.ws}/calls/{CALL}/live") as ws:
        got = [await recv(ws), await recv(ws)]
        assert [(e.seq, getattr(e, "text", "")) for e in got] == [(1, "hello"), (2, "hi")]

        await store.publish(events.Partial(call_sid=CALL, seq=2, track="inbound", start=2.0, end=2.4, text="how"))
        await store.add_final(final(2.0, "how are you"))
        await store.publish(events.Partial(call_sid="CAother", track="inbound", start=0, end=1, text="secret"))
        partial = await recv(ws)
        assert isinstance(partial, events.Partial) and partial.text == "how"
        third = await recv(ws)
        assert isinstance(third, events.Final) and third.seq == 3 and third.text == "how are you"

        await store.call_ended(CALL, ended_at=1010.0, reason="completed")
        ended = await recv(ws)
        assert isinstance(ended, events.CallEnded) and ended.seq == 3 and ended.reason == "completed"
        assert await close_of(ws) == (1000, "call ended")
        await eventually(lambda: srv.hub.subscriber_count == 0)


async def test_ws_resume_after_seq(store: Store, served: Serve) -> None:
    await started(store)
    for i in range(4):
        await store.add_final(final(float(i), f"f{i}"))
    async with served() as srv, connect(f"{srv.ws}/calls/{CALL}/live?after=2") as ws:
        first = await recv(ws)
        assert isinstance(first, events.Final) and first.seq == 3
        await store.add_final(final(9.0, "new"))
        assert [(await recv(ws)).seq for _ in range(2)] == [4, 5]


async def test_ws_of_ended_call_gets_snapshot_and_end(store: Store, served: Serve) -> None:
    await started(store)
    await store.add_final(final(0.0, "bye"))
    await store.call_ended(CALL, ended_at=1005.0)
    async with served() as srv, connect(f"{srv.ws}/calls/{CALL}/live") as ws:
        assert (await recv(ws)).seq == 1
        ended = await recv(ws)
        assert isinstance(ended, events.CallEnded) and ended.duration == 5.0
        assert (await close_of(ws))[0] == 1000


async def test_no_gap_no_duplicate_while_finals_stream_in(store: Store, served: Serve) -> None:
    """Subscribers joining at random moments during a burst each see 1..N exactly once."""
    await started(store)
    total = 200

    async def produce() -> None:
        for i in range(total):
            await store.add_final(final(i * 0.1, f"w{i}"))
            if i % 10 == 0:
                await asyncio.sleep(0)
        await store.call_ended(CALL, ended_at=2000.0)

    async def subscriber(url: str, delay: int) -> list[int]:
        for _ in range(delay):
            await asyncio.sleep(0)
        seqs: list[int] = []
        async with connect(url) as ws:
            while True:
                event = await recv(ws)
                if isinstance(event, events.CallEnded):
                    return seqs
                seqs.append(event.seq)

    async with served() as srv:
        url = f"{srv.ws}/calls/{CALL}/live"
        producer = asyncio.create_task(produce())
        results = await asyncio.gather(*(subscriber(url, d) for d in (0, 5, 20, 50, 200)))
        await producer
    for seqs in results:
        assert seqs == list(range(1, total + 1))


async def test_sse_snapshot_live_and_last_event_id_resume(store: Store, served: Serve) -> None:
    await started(store)
    await store.add_final(final(0.0, "one"))
    await store.add_final(final(1.0, "two"))
    async with served() as srv, httpx.AsyncClient(base_url=srv.http) as client:
        async with client.stream("GET", f"/calls/{CALL}/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            await store.publish(events.Partial(call_sid=CALL, track="outbound", start=2, end=3, text="thr"))
            frames = await read_sse(response, until="partial")
        assert [(f.get("id"), f["event"]) for f in frames] == [("1", "final"), ("2", "final"), (None, "partial")]
        assert events.decode(frames[0]["data"]) == (await store.finals(CALL))[0]

        await store.add_final(final(2.0, "three"))
        await store.add_final(final(3.0, "four"))
        # The browser reconnects with Last-Event-ID (the URL still carries the original ?after=0).
        async with client.stream("GET", f"/calls/{CALL}/events?after=0", headers={"Last-Event-ID": "2"}) as response:
            await store.call_ended(CALL, ended_at=1100.0)
            frames = await read_sse(response, until="call_ended")
        assert [f.get("id") for f in frames if f["event"] == "final"] == ["3", "4"]
        assert frames[-1]["event"] == "call_ended"

        async with client.stream("GET", f"/calls/{CALL}/events?after=3") as response:
            frames = await read_sse(response, until="call_ended")
        assert [f.get("id") for f in frames if f["event"] == "final"] == ["4"]


async def test_two_instances_share_redis(store: Store, served: Serve, redis_url: str) -> None:
    """A final written by instance A reaches a subscriber connected to instance B."""
    client_b = client_from_url(redis_url)
    store_b = Store(client_b, prefix=store.keys.prefix, retention_seconds=store.retention_seconds)
    try:
        await started(store)
        async with served(store) as a, served(store_b) as b:
            async with connect(f"{b.ws}/calls/{CALL}/live") as ws_b, connect(f"{a.ws}/calls/{CALL}/live") as ws_a:
                await asyncio.sleep(0)
                # written through instance A's store
                await a.app.state.store.add_final(final(0.0, "from A"))
                got_b, got_a = await recv(ws_b), await recv(ws_a)
                assert isinstance(got_b, events.Final) and got_b.text == "from A" and got_b.seq == 1
                assert got_a == got_b
            await eventually(lambda: a.hub.channel_count == 0 and b.hub.channel_count == 0)
    finally:
        await client_b.aclose()


async def test_many_local_subscribers_one_redis_subscription(store: Store, served: Serve) -> None:
    await started(store)
    async with served() as srv, contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(connect(f"{srv.ws}/calls/{CALL}/live")) for _ in range(20)]
        await store.add_final(final(0.0, "to all"))
        for ws in sockets:
            assert (await recv(ws)).seq == 1
        assert srv.hub.subscriber_count == 20
        assert srv.hub.channel_count == 1
        numsub = await store.client.pubsub_numsub(store.keys.channel(CALL))
        assert numsub[0][1] == 1


async def test_hub_resubscribes_after_connection_loss(store: Store, served: Serve) -> None:
    await started(store)
    async with served() as srv, connect(f"{srv.ws}/calls/{CALL}/live") as ws:
        await store.add_final(final(0.0, "before"))
        assert (await recv(ws)).seq == 1
        name = f"{store.keys.prefix}:fanout-hub"
        clients = await store.client.client_list(_type="pubsub")
        ids = [c["id"] for c in clients if c.get("name") == name]
        assert len(ids) == 1
        await store.client.client_kill_filter(_id=ids[0])
        # Written while the hub may be reconnecting: delivered by the resync or live, exactly once.
        await store.add_final(final(1.0, "during"))
        assert (await recv(ws)).seq == 2
        await eventually(lambda: srv.hub.reconnects >= 1)
        await store.add_final(final(2.0, "after"))
        third = await recv(ws)
        assert isinstance(third, events.Final) and third.seq == 3 and third.text == "after"
