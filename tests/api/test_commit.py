"""``POST /calls/{sid}/commit`` on a running bridge: the segment closes at once, its final is stored once,
and every bad request gets its status (the dashboard's Commit button and the /try page rely on it)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from bridge.live import auth
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.store import Store
from bridge.testing import ScriptedDeepgramServer
from bridge.testing.deepgram import window_word
from bridge.testing.elevenlabs import ScriptedScribeServer
from tests.support.capture import AUDIO, close_of, open_capture, started, until

SECRET = "commit-secret"
HALF = AUDIO[:4000]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def settings(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer, store: Store
) -> Settings:
    """A bridge on the test's Redis prefix (``store`` deletes its keys afterwards)."""
    return dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, recording_dir=tmp_path,
        recognizer="deepgram", recognizer_url=scripted.url,
    )  # fmt: skip


@pytest.fixture
async def bridge(settings: Settings) -> AsyncIterator[str]:
    async with running_bridge(settings) as (_app, http):
        yield http


async def call_info(http: str, call_sid: str) -> bool:
    async with httpx.AsyncClient(base_url=http) as client:
        return (await client.get(f"/calls/{call_sid}")).status_code == 200


async def finals_of(http: str, call_sid: str, token: str = "") -> list[dict[str, object]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=http, headers=headers) as client:
        r = await client.get(f"/calls/{call_sid}/transcript")
    return list(r.json()) if r.status_code == 200 else []


async def commit(http: str, call_sid: str, body: object = None, *, token: str = "", raw: bytes | None = None
                 ) -> httpx.Response:  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=http, headers=headers) as client:
        if raw is not None:
            return await client.post(f"/calls/{call_sid}/commit", content=raw)
        return await client.post(f"/calls/{call_sid}/commit", json=body if body is not None else {"track": "inbound"})


async def send(ws: object, audio: bytes) -> None:
    for i in range(0, len(audio), 160):
        await ws.send(audio[i : i + 160])  # type: ignore[attr-defined]


async def commit_mid_sentence(http: str, received: Callable[[], int], token: str = "") -> None:
    """Half a second of speech, a commit, more speech: the commit's final is there at once, once.
    ``received``: audio bytes the recognizer has had (the commit is made once all of HALF is in)."""
    ws = await open_capture(http, token=token)
    hello = await started(ws)
    call_sid, reader = hello["call_sid"], hello["token"]
    before = received()
    await send(ws, HALF)

    async def arrived() -> bool:
        return received() - before >= len(HALF)

    await until(arrived)
    r = await commit(http, call_sid, token=reader)
    assert r.status_code == 200, r.text
    assert r.json() == {"call_sid": call_sid, "track": "inbound", "at": 0.5}
    # The recognizer only closes a segment after a full second, or when told to: this one is the commit's.
    first = await until(lambda: finals_of(http, call_sid, reader))
    assert [(f["start"], f["end"], f["text"]) for f in first] == [(0.0, 0.5, window_word(HALF))]
    await send(ws, AUDIO[4000:12000])
    await ws.send('{"type": "stop"}')
    await close_of(ws)

    async def all_finals() -> list[dict[str, object]]:
        finals = await finals_of(http, call_sid, reader)
        return finals if len(finals) == 2 else []

    finals = await until(all_finals)
    assert [(f["start"], f["end"]) for f in finals] == [(0.0, 0.5), (0.5, 1.5)]  # stored once, windows go on
    assert len({f["id"] for f in finals}) == 2


async def test_a_commit_closes_the_segment_now_and_its_final_is_stored_once(
    bridge: str, scripted: ScriptedDeepgramServer
) -> None:
    await commit_mid_sentence(bridge, lambda: scripted.received_bytes)


async def test_a_commit_with_elevenlabs_closes_the_segment_now(settings: Settings) -> None:
    async with ScriptedScribeServer() as scribe:
        elevenlabs = dataclasses.replace(settings, recognizer="elevenlabs", recognizer_url=scribe.url,
                                         recognizer_api_key="")  # fmt: skip
        async with running_bridge(elevenlabs) as (_app, http):
            await commit_mid_sentence(http, lambda: sum(len(c.audio) for c in scribe.connections))
    assert any(c.commit for c in scribe.connections[0].chunks[:-1])


async def test_a_reader_of_the_call_may_commit_and_a_capture_token_may_not(
    settings: Settings, scripted: ScriptedDeepgramServer
) -> None:
    secured = dataclasses.replace(settings, subscriber_secret=SECRET)
    capture = auth.mint(SECRET, [], 600, scope="capture")
    async with running_bridge(secured) as (_app, http):
        ws = await open_capture(http, token=capture)
        call_sid = (await started(ws))["call_sid"]
        await send(ws, HALF)
        other = auth.mint(SECRET, ["CA" + "1" * 32], 600)
        assert (await commit(http, call_sid)).status_code == 401
        assert (await commit(http, call_sid, token=capture)).status_code == 403
        assert (await commit(http, call_sid, token=other)).status_code == 403
        assert (await commit(http, call_sid, token=auth.mint(SECRET, ["*"], 600))).status_code == 200
        await ws.send('{"type": "stop"}')
        await close_of(ws)
        await commit_mid_sentence(http, lambda: scripted.received_bytes, capture)


@pytest.mark.parametrize(
    ("body", "raw"),
    [
        ({"track": "both"}, None),
        ({}, None),
        ({"track": "inbound", "extra": 1}, None),
        (None, b"not json"),
        (None, b""),
        (None, b'{"track": "inbound"}' + b" " * 2000),
    ],
)
async def test_a_bad_body_is_a_400(bridge: str, body: object, raw: bytes | None) -> None:
    ws = await open_capture(bridge)
    call_sid = (await started(ws))["call_sid"]
    r = await commit(bridge, call_sid, body, raw=raw)
    assert r.status_code == 400 and r.json()["error"]
    await ws.close()


async def test_unknown_ended_or_trackless_calls_and_bad_sids(bridge: str) -> None:
    assert (await commit(bridge, "CA" + "a" * 32)).json() == {"error": "unknown or ended call"}
    assert (await commit(bridge, "not-a-sid")).status_code == 400
    ws = await open_capture(bridge)
    call_sid = (await started(ws))["call_sid"]
    r = await commit(bridge, call_sid, {"track": "outbound"})
    assert (r.status_code, r.json()) == (404, {"error": "call has no open outbound track"})
    await ws.send('{"type": "stop"}')
    await close_of(ws)

    async def gone() -> bool:
        return (await commit(bridge, call_sid)).status_code == 404

    await until(gone)


async def routed_commit(carrier: str, other: str, scripted: ScriptedDeepgramServer) -> None:
    """A capture on ``carrier``, committed through ``other``: answered by the carrier, stored once."""
    ws = await open_capture(carrier)
    call_sid = (await started(ws))["call_sid"]
    await send(ws, HALF)

    async def ready() -> bool:  # its record reached Redis, all of HALF reached the recognizer
        return scripted.received_bytes >= len(HALF) and await call_info(other, call_sid)

    await until(ready)
    r = await commit(other, call_sid)  # routed through Redis to the carrier
    assert (r.status_code, r.json()) == (200, {"call_sid": call_sid, "track": "inbound", "at": 0.5})
    finals = await until(lambda: finals_of(other, call_sid))
    assert [(f["start"], f["end"]) for f in finals] == [(0.0, 0.5)]
    r = await commit(other, call_sid, {"track": "outbound"})
    assert (r.status_code, r.json()) == (404, {"error": "call has no open outbound track"})
    await ws.send('{"type": "stop"}')
    await close_of(ws)


async def test_a_call_on_another_instance_is_committed_there_and_stored_once(
    settings: Settings, scripted: ScriptedDeepgramServer
) -> None:
    async with running_bridge(settings) as (_a, carrier), running_bridge(settings) as (_b, other):
        await routed_commit(carrier, other, scripted)
    assert scripted.connections[-1].controls.count("Finalize") == 2  # the commit's, and close's


async def test_a_commit_is_routed_across_a_redis_cluster(
    redis_cluster_url: str, cluster_store: Store, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_cluster_url, redis_cluster=True, redis_prefix=cluster_store.keys.prefix,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=scripted.url,
    )  # fmt: skip
    async with running_bridge(settings) as (_a, carrier), running_bridge(settings) as (_b, other):
        await routed_commit(carrier, other, scripted)
    assert scripted.connections[-1].controls.count("Finalize") == 2  # the commit's, and close's


async def test_an_active_call_nobody_carries_is_a_409(settings: Settings, store: Store) -> None:
    call_sid = "CA" + "e" * 32  # marked active by an instance that died
    await store.call_started(call_sid, stream_sid="MZ" + "0" * 32, tracks=["inbound"], started_at=1.0)
    async with running_bridge(settings) as (_app, http):
        r = await commit(http, call_sid)
    assert r.status_code == 409
    assert r.json() == {"error": "call is carried by another bridge instance that did not answer"}


async def test_a_track_whose_recognizer_refused_it_is_a_409(bridge: str, scripted: ScriptedDeepgramServer) -> None:
    scripted.reject(401)  # a bad key: the track is not transcribed (its audio waits for the batch pass)
    ws = await open_capture(bridge)
    call_sid = (await started(ws))["call_sid"]
    r = await commit(bridge, call_sid)
    assert (r.status_code, r.json()) == (409, {"error": "the inbound track is not being transcribed"})
    await ws.close()
