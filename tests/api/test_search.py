"""``GET /search`` over real HTTP: matches, order, token scoping, and bad input as clear 400s."""

from __future__ import annotations

import time

import httpx

from bridge import events
from bridge.live import auth as tokens
from bridge.store import Store
from tests.support.served import Serve

SECRET = "s3cret-for-search"
A = "CA000000000000000000000000000000aa"
B = "CA000000000000000000000000000000bb"


def final(call_sid: str, track: events.Track, start: float, text: str) -> events.Final:
    return events.Final(call_sid=call_sid, id=events.final_id(track, start), track=track, start=start,
                        end=start + 1, text=text)  # fmt: skip


async def two_calls(store: Store) -> None:
    now = time.time()
    await store.call_started(A, stream_sid="MZa", tracks=["inbound", "outbound"], started_at=now - 60,
                             from_number="+15550001", to_number="+15550002")  # fmt: skip
    await store.add_final(final(A, "outbound", 0.5, "Thanks for calling, how can I help?"))
    await store.add_final(final(A, "inbound", 2.0, "I lost my credit card."))
    await store.call_ended(A, ended_at=now - 30)
    await store.call_started(B, stream_sid="MZb", tracks=["inbound"], started_at=now - 10)
    await store.add_final(final(B, "inbound", 1.5, "My credit card was stolen"))


async def test_search_returns_calls_and_segments_newest_first(store: Store, served: Serve) -> None:
    await two_calls(store)
    async with served() as srv, httpx.AsyncClient(base_url=srv.http) as client:
        r = await client.get("/search", params={"q": "Credit card"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["query"] == "Credit card" and body["words"] == ["credit", "card"]
        assert [c["call_sid"] for c in body["calls"]] == [B, A]  # B started later
        older = body["calls"][1]
        assert older["status"] == "ended" and older["from_number"] == "+15550001"
        assert older["duration"] == 30.0
        assert older["segments"] == [{"track": "inbound", "start": 2.0, "end": 3.0,
                                      "text": "I lost my credit card.", "seq": 2}]  # fmt: skip
        assert body["calls"][0]["status"] == "active"

        r = await client.get("/search", params={"q": "how can i help", "limit": "1"})
        assert [c["call_sid"] for c in r.json()["calls"]] == [A]
        assert (await client.get("/search", params={"q": "credit card stolen"})).json()["calls"] == []


async def test_bad_queries_are_clear_400s(store: Store, served: Serve) -> None:
    async with served() as srv, httpx.AsyncClient(base_url=srv.http) as client:
        for params, reason in [
            ({}, "q is required"),
            ({"q": "   "}, "q is required"),
            ({"q": "?!. --"}, "no words"),
            ({"q": "a" * 5000}, "too long"),
            ({"q": " ".join(["w"] * 13)}, "too many words"),
            ({"q": "card", "limit": "0"}, "limit"),
            ({"q": "card", "limit": "many"}, "limit"),
            ({"q": "card", "limit": "999999999999"}, "limit"),
        ]:
            r = await client.get("/search", params=params)
            assert r.status_code == 400, params
            assert reason in r.json()["error"], (params, r.json())
        # Odd but harmless input is a search, not an error.
        r = await client.get("/search", params={"q": "{card} 'quoted' \x00 ☎"})
        assert r.status_code == 200 and r.json()["calls"] == []


async def test_search_needs_a_token_and_finds_only_granted_calls(store: Store, served: Serve) -> None:
    await two_calls(store)
    async with served(subscriber_secret=SECRET) as srv, httpx.AsyncClient(base_url=srv.http) as client:
        assert (await client.get("/search", params={"q": "card"})).status_code == 401
        expired = tokens.mint(SECRET, ["*"], -5)
        r = await client.get("/search", params={"q": "card"}, headers={"Authorization": f"Bearer {expired}"})
        assert r.status_code == 401 and "expired" in r.json()["error"]
        only_a = tokens.mint(SECRET, [A], 60)
        r = await client.get("/search", params={"q": "credit card"}, headers={"Authorization": f"Bearer {only_a}"})
        assert [c["call_sid"] for c in r.json()["calls"]] == [A]
        every = tokens.mint(SECRET, ["*"], 60)
        r = await client.get("/search", params={"q": "credit card"}, headers={"Authorization": f"Bearer {every}"})
        assert [c["call_sid"] for c in r.json()["calls"]] == [B, A]
