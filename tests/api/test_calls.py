"""Call API and auth over real HTTP/WebSocket: 404/401/403, token scoping, transcripts."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bridge import events
from bridge.live import auth as tokens
from bridge.store import Store
from tests.support.served import Serve

SECRET = "s3cret-for-tests"
A = "CA000000000000000000000000000000aa"
B = "CA000000000000000000000000000000bb"
NOPE = "CA000000000000000000000000000000cc"  # a CallSid no call has


def final(call_sid: str, track: events.Track, start: float, text: str) -> events.Final:
    return events.Final(
        call_sid=call_sid, id=events.final_id(track, start), track=track, start=start, end=start + 1, text=text
    )


async def setup_calls(store: Store) -> None:
    await store.call_started(A, stream_sid="MZa", tracks=["inbound", "outbound"], started_at=time.time() - 5,
                             from_number="+15550001")  # fmt: skip
    await store.call_started(B, stream_sid="MZb", tracks=["inbound"], started_at=time.time())
    await store.add_final(final(A, "outbound", 1.0, "Thanks for calling."))
    await store.add_final(final(A, "inbound", 0.5, "Hello?"))
    await store.add_final(final(B, "inbound", 0.5, "B's private words"))
    await store.call_ended(A, ended_at=time.time())


async def ws_close(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with connect(url, additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(5):
                await ws.recv()
    assert info.value.rcvd is not None
    return info.value.rcvd.code, info.value.rcvd.reason


async def test_open_endpoints_without_secret(store: Store, served: Serve) -> None:
    await setup_calls(store)
    async with served() as srv, httpx.AsyncClient(base_url=srv.http) as client:
        calls = (await client.get("/calls")).json()
        assert [c["call_sid"] for c in calls] == [B, A]
        assert [c["call_sid"] for c in (await client.get("/calls?active=true")).json()] == [B]
        assert [c["call_sid"] for c in (await client.get("/calls?active=false")).json()] == [A]
        assert (await client.get("/calls?active=maybe")).status_code == 400

        info = (await client.get(f"/calls/{A}")).json()
        assert info["status"] == "ended" and info["from_number"] == "+15550001" and info["finals"] == 2
        assert info["stream_sids"] == ["MZa"] and info["tracks"] == ["inbound", "outbound"]

        transcript = (await client.get(f"/calls/{A}/transcript")).json()
        assert [f["text"] for f in transcript] == ["Hello?", "Thanks for calling."]
        text = await client.get(f"/calls/{A}/transcript?format=text")
        assert text.headers["content-type"].startswith("text/plain")
        assert text.text == "Caller: Hello?\nAgent: Thanks for calling.\n"
        accept = await client.get(f"/calls/{A}/transcript", headers={"Accept": "text/plain"})
        assert accept.text == text.text

        for path in (f"/calls/{NOPE}", f"/calls/{NOPE}/transcript", f"/calls/{NOPE}/events"):
            response = await client.get(path)
            assert response.status_code == 404, path
            assert response.json() == {"error": "unknown call"}
        for path in ("/calls/CAnope", f"/calls/{A}:finals/transcript", "/calls/CAnope/events"):
            response = await client.get(path)
            assert response.status_code == 400, path
            assert response.json() == {"error": "invalid CallSid"}
        assert (await client.get(f"/calls/{A}/events?after=x")).status_code == 400
    async with served() as srv:
        assert await ws_close(f"{srv.ws}/calls/{NOPE}/live") == (4404, "unknown call")
        assert await ws_close(f"{srv.ws}/calls/CAnope/live") == (4400, "invalid CallSid")
        assert (await ws_close(f"{srv.ws}/calls/{A}/live?after=-1"))[0] == 4400


async def test_tokens_scope_every_endpoint(store: Store, served: Serve) -> None:
    await setup_calls(store)
    token_a = tokens.mint(SECRET, [A], ttl=60)
    token_all = tokens.mint(SECRET, ["*"], ttl=60)
    expired = tokens.mint(SECRET, [A], ttl=60, now=time.time() - 3600)
    forged = tokens.mint("other-secret", ["*"], ttl=60)
    async with served(subscriber_secret=SECRET) as srv, httpx.AsyncClient(base_url=srv.http) as client:
        for path in (f"/calls/{A}", f"/calls/{A}/transcript", f"/calls/{A}/events", "/calls"):
            assert (await client.get(path)).status_code == 401, path
            for bad in (expired, forged, "garbage"):
                assert (await client.get(path, params={"token": bad})).status_code == 401, path
        # A token for A: A is visible, B is forbidden (even its existence), unknown ids too.
        auth = {"Authorization": f"Bearer {token_a}"}
        assert (await client.get(f"/calls/{A}", headers=auth)).status_code == 200
        assert (await client.get(f"/calls/{A}/transcript", params={"token": token_a})).status_code == 200
        for path in (f"/calls/{B}", f"/calls/{B}/transcript", f"/calls/{B}/events", f"/calls/{NOPE}"):
            response = await client.get(path, headers=auth)
            assert response.status_code == 403, path
            assert "B's private" not in response.text
        listed = (await client.get("/calls", headers=auth)).json()
        assert [c["call_sid"] for c in listed] == [A]
        assert (await client.get("/calls?active=true", headers=auth)).json() == []
        everything = (await client.get("/calls", params={"token": token_all})).json()
        assert {c["call_sid"] for c in everything} == {A, B}

        assert await ws_close(f"{srv.ws}/calls/{A}/live") == (4401, "missing token")
        assert (await ws_close(f"{srv.ws}/calls/{A}/live?token={forged}"))[0] == 4401
        assert (await ws_close(f"{srv.ws}/calls/{B}/live?token={token_a}"))[0] == 4403
        assert (await ws_close(f"{srv.ws}/calls/{B}/live", {"Authorization": f"Bearer {token_a}"}))[0] == 4403
        async with connect(f"{srv.ws}/calls/{A}/live?token={token_a}") as ws:
            async with asyncio.timeout(5):
                first = events.decode(await ws.recv())
            assert isinstance(first, events.Final) and first.call_sid == A


def test_token_roundtrip_and_tampering() -> None:
    token = tokens.mint(SECRET, [A, B], ttl=60)
    assert tokens.verify(SECRET, token, A) and tokens.verify(SECRET, token, B)
    assert not tokens.verify(SECRET, token, "CAother")
    assert not tokens.verify("wrong", token, A)
    version, _claims, sig = token.split(".")
    other_claims = tokens.mint(SECRET, ["*"], ttl=60).split(".")[1]
    assert not tokens.verify(SECRET, f"{version}.{other_claims}.{sig}", "CAother")
    assert not tokens.verify(SECRET, "v1.!!!.???", A)
    assert tokens.verify(SECRET, tokens.mint(SECRET, ["*"], ttl=60), "CAanything")
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.parse(SECRET, tokens.mint(SECRET, [A], ttl=1, now=time.time() - 10))
