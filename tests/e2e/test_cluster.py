"""End to end on a real three-master Redis Cluster: a fixture call replayed through a bridge, its live events
fanned out by a second bridge (a ``bridge serve`` process configured by ``BRIDGE_REDIS_CLUSTER``), and
its recording taken by the batch worker.

Words come from the shipped scripted recognizer (a function of the audio), so "every final exactly
once" is checked segment by segment against :func:`bridge.testing.scripted_finals`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from bridge import events
from bridge.audio import to_twilio_mulaw
from bridge.batch.worker import Worker
from bridge.server import running_bridge
from bridge.settings import Settings, SettingsError
from bridge.store import Store
from bridge.store.jobs import RecordingJob
from bridge.testing import ScriptedDeepgramServer, scripted_finals
from bridge.twilio.replay import replay
from tests.batch.conftest import FakeEngine
from tests.support import SUPPORT_CALL
from tests.support.bridges import BridgeProcess

TOKEN = "cluster-token"
Row = tuple[str, float, float, str]


def _expected(wav: Path) -> list[Row]:
    rows: list[Row] = []
    for track, audio in zip(("inbound", "outbound"), to_twilio_mulaw(wav), strict=True):
        padded = audio.ljust(-(-len(audio) // 160) * 160, b"\xff")
        rows += [(track, round(s, 3), round(e, 3), w) for s, e, w in scripted_finals(padded)]
    return sorted(rows, key=lambda r: (r[1], r[0] != "inbound"))


def _rows(finals: list[events.Final] | list[dict[str, Any]]) -> list[Row]:
    rows = [(f.track, f.start, f.end, f.text) if isinstance(f, events.Final) else
            (f["track"], f["start"], f["end"], f["text"]) for f in finals]  # fmt: skip
    return sorted(rows, key=lambda r: (r[1], r[0] != "inbound"))


async def _subscribe(url: str, out: list[events.LiveEvent]) -> None:
    async with websockets.connect(url) as ws:
        async for raw in ws:
            out.append(events.decode(raw))
            if isinstance(out[-1], events.CallEnded):
                return


async def _wait_for_call(client: httpx.AsyncClient, call_sid: str) -> None:
    for _ in range(1000):
        if (await client.get(f"/calls/{call_sid}")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"call {call_sid} never appeared")


async def test_a_call_on_a_cluster_is_stored_once_fanned_out_by_another_bridge_and_batch_processed(
    redis_cluster_url: str, cluster_store: Store, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    prefix = cluster_store.keys.prefix
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_cluster_url, redis_cluster=True, redis_prefix=prefix,
        twilio_auth_token=TOKEN, recording_dir=tmp_path / "a", recognizer="deepgram", recognizer_url=scripted.url,
    )  # fmt: skip
    b = BridgeProcess(tmp_path / "b", {
        "REDIS_URL": redis_cluster_url, "BRIDGE_REDIS_CLUSTER": "true", "BRIDGE_REDIS_PREFIX": prefix,
        "TWILIO_AUTH_TOKEN": TOKEN, "BRIDGE_RECOGNIZER": "deepgram", "BRIDGE_RECOGNIZER_URL": scripted.url,
        "BRIDGE_RECOGNIZER_API_KEY": "scripted",
    })  # fmt: skip
    call_sid = "CA" + "c1a5" * 8
    on_a: list[events.LiveEvent] = []
    on_b: list[events.LiveEvent] = []
    try:
        await b.start()
        async with (
            running_bridge(settings) as (_app, a_url),
            httpx.AsyncClient(base_url=b.url, timeout=10) as via_b,
        ):
            a_ws = a_url.replace("http://", "ws://")
            player = asyncio.create_task(replay(SUPPORT_CALL, url=f"{a_ws}/twilio/media", auth_token=TOKEN,
                                                call_sid=call_sid, speed=4))  # fmt: skip
            await _wait_for_call(via_b, call_sid)
            b_ws = b.url.replace("http://", "ws://")
            async with asyncio.timeout(120):
                await asyncio.gather(_subscribe(f"{b_ws}/calls/{call_sid}/live", on_b),
                                     _subscribe(f"{a_ws}/calls/{call_sid}/live", on_a), player)  # fmt: skip
            stored = (await via_b.get(f"/calls/{call_sid}/transcript")).json()
            listed = [c["call_sid"] for c in (await via_b.get("/calls")).json()]

            # Every final once, exactly what the recognizer finalized, seen live on both bridges.
            expected = _expected(SUPPORT_CALL)
            assert _rows(stored) == expected
            for seen in (on_a, on_b):
                finals = [e for e in seen if isinstance(e, events.Final)]
                assert _rows(finals) == expected
                assert [f.seq for f in finals] == list(range(1, len(expected) + 1))
                assert isinstance(seen[-1], events.CallEnded)
            assert any(isinstance(e, events.Partial) for e in on_b), "no partial crossed the cluster"
            assert listed == [call_sid]

            # The batch pass on the cluster: the call's recording job, processed and acked.
            ((_entry, fields),) = await cluster_store.client.xrange(cluster_store.keys.recordings)
            assert RecordingJob.from_fields(fields).call_sid == call_sid
            engine = FakeEngine()
            worker = Worker(cluster_store, engine, consumer="w1", block_ms=50, write_json=False)
            assert await worker.process_one() is True
            assert engine.calls == 1
            batch = (await via_b.get(f"/calls/{call_sid}/transcript", params={"source": "batch"})).json()
            assert batch["call_sid"] == call_sid and batch["engine"] == "fake"
            quality = (await via_b.get(f"/calls/{call_sid}/quality")).json()
            assert quality["live_finals"] == len(expected)
            backlog = await cluster_store.jobs.backlog()
            assert (backlog.queued, backlog.pending, backlog.dead) == (0, 0, 0)
    finally:
        b.stop()


def test_a_cluster_needs_a_node_to_start_from() -> None:
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env({"BRIDGE_REDIS_CLUSTER": "true"})  # no embedded Redis Cluster
    assert Settings.from_env({"BRIDGE_REDIS_CLUSTER": "true", "REDIS_URL": "redis://10.0.0.5:7000"}).redis_cluster
    assert not Settings.from_env({}).redis_cluster
