"""``DELETE /calls/{sid}`` on a running ``bridge serve`` (issue #13): a call with finals, a recording, a
batch transcript and its ``.batch.json`` is erased; no key (but its data-free tombstone) and no file is
left; and a late batch job, recording callback, status callback, final or new stream does not bring it
back. Bad requests are refused with a clear status and logged with the call id."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlencode

import httpx

from bridge import events
from bridge.batch.worker import Worker
from bridge.retention.files import Sweeper
from bridge.store import Store, client_from_url
from bridge.store.jobs import RecordingJob
from bridge.testing import ScriptedDeepgramServer, TwilioStream
from bridge.transcripts import Recording, Utterance, tracks_for
from bridge.twilio.auth import SIGNATURE_HEADER, sign
from tests.support.bridges import TWILIO_TOKEN, BridgeProcess, bridge_env
from tests.support.calls import poll, send, speech

ADMIN = "admin-token-for-the-test"
SID = "CA" + "e5" * 16
ACCOUNT = "AC" + "0" * 32


class OneLineEngine:
    """A batch engine that hears one utterance per channel (the erasure does not care what)."""

    name = "one-line"
    model = "1"

    async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]:
        return [Utterance(id=t, track=t, channel=ch, speaker=t, start=0.0, end=1.0, text="my account number")
                for ch, t in enumerate(tracks_for(recording.channels, tracks))]  # fmt: skip


async def _keys_naming(store: Store, sid: str) -> list[str]:
    found = [k.decode() async for k in store.client.scan_iter(match=store.keys.pattern(), count=500)]
    return sorted(k for k in found if sid in k)


async def _jobs_of(store: Store, sid: str) -> int:
    q = store.keys.recording_queue
    entries = [*await store.client.xrange(q.stream), *await store.client.xrange(q.dead)]
    return sum(1 for _id, fields in entries if fields.get(b"call_sid") == sid.encode())


async def _twilio_post(client: httpx.AsyncClient, base: str, path: str, form: dict[str, str]) -> httpx.Response:
    signature = sign(TWILIO_TOKEN, base + path, form)
    headers = {"content-type": "application/x-www-form-urlencoded", SIGNATURE_HEADER: signature}
    return await client.post(path, content=urlencode(form), headers=headers)


async def test_a_deleted_call_leaves_no_key_and_no_file_and_stays_gone(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    recordings = tmp_path / "recordings"
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_ADMIN_TOKEN=ADMIN,
                     BRIDGE_RECORDING_DIR=str(recordings))  # fmt: skip
    store = Store(client_from_url(redis_url), prefix=redis_prefix, retention_seconds=3600)
    worker = Worker(store, OneLineEngine(), block_ms=200, recording_dir=recordings)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        async with (
            BridgeProcess(tmp_path / "bridge", env) as bridge,
            httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
        ):
            # A whole call: finals, an end, a recording, its batch pass (Redis and .batch.json).
            async with TwilioStream(f"{bridge.ws}/twilio/media", SID, auth_token=TWILIO_TOKEN) as stream:
                await send(stream, speech(3.0, 5))
                await stream.stop()

            async def ended() -> bool:
                r = await client.get(f"/calls/{SID}")
                return r.status_code == 200 and r.json()["status"] == "ended" and r.json()["finals"] > 0

            await poll(ended, "the call to end with finals")
            status = {"CallSid": SID, "AccountSid": ACCOUNT, "CallStatus": "completed"}
            assert (await _twilio_post(client, bridge.url, "/twilio/status", status)).status_code == 204
            assert await _jobs_of(store, SID) == 1
            assert await worker.process_one()
            assert (await store.batch_transcript(SID)) is not None
            files = sorted(p.name for p in recordings.iterdir())
            assert files == [f"{SID}.batch.json", f"{SID}.wav"]
            assert len(await _keys_naming(store, SID)) >= 5

            async def indexed() -> list[bytes]:  # search-index sets that still name the call
                found = [k async for k in store.client.scan_iter(match=f"{store.keys.prefix}:search:*", count=500)]
                return [k for k in found if await store.client.zscore(k, SID) is not None]

            assert await indexed()

            # Refusals: clear statuses, never a crash, logged with the call id.
            assert (await client.delete(f"/calls/{SID}")).status_code == 401
            wrong = await client.delete(f"/calls/{SID}", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 403
            bad = await client.delete("/calls/CA..%2Fetc", headers=admin)
            assert bad.status_code in (400, 404)  # the path router may refuse an encoded slash itself
            assert (await client.delete("/calls/CAnot-a-sid", headers=admin)).status_code == 400
            assert (await client.get("/healthz")).status_code == 200

            erased = await client.delete(f"/calls/{SID}", headers=admin)
            assert erased.status_code == 200, erased.text
            body = erased.json()
            assert sorted(body["erased"]["files"]) == files and body["erased"]["redis"]["index_entries"] >= 1

            async def only_the_tombstone() -> list[str]:
                return await _keys_naming(store, SID)

            assert await only_the_tombstone() == [store.keys.tombstone(SID)]
            assert float(await store.client.get(store.keys.tombstone(SID))) <= time.time()  # a time, no call data
            assert list(recordings.iterdir()) == []
            assert (await client.get(f"/calls/{SID}")).status_code == 404
            assert SID not in [c["call_sid"] for c in (await client.get("/calls")).json()]

            # Late arrivals of every kind.
            await store.client.xadd(store.keys.recordings,
                                    RecordingJob(call_sid=SID, path=str(recordings / f"{SID}.wav")).to_fields())  # type: ignore[arg-type]  # fmt: skip
            assert await worker.process_one()  # acked as a job of an erased call
            rec_form = {"CallSid": SID, "AccountSid": ACCOUNT, "RecordingSid": "RE" + "1" * 32,
                        "RecordingUrl": f"https://api.twilio.com/2010-04-01/Accounts/{ACCOUNT}/Recordings/RE{'1' * 32}",
                        "RecordingStatus": "completed", "RecordingChannels": "1"}  # fmt: skip
            assert (await _twilio_post(client, bridge.url, "/twilio/recording", rec_form)).status_code == 204
            assert (await _twilio_post(client, bridge.url, "/twilio/status", status)).status_code == 204
            late = events.Final(call_sid=SID, id=events.final_id("inbound", 50.0), track="inbound", start=50.0,
                                end=51.0, text="late words")  # fmt: skip
            assert await store.add_final(late) is None
            async with TwilioStream(f"{bridge.ws}/twilio/media", SID, auth_token=TWILIO_TOKEN) as again:
                await again.ws.wait_closed()  # type: ignore[union-attr]
                assert again.ws is not None and again.ws.close_code == 1008
                assert again.ws.close_reason == "call was erased"

            assert await only_the_tombstone() == [store.keys.tombstone(SID)]
            assert await indexed() == []  # its words left the search index, and the late final's never came
            assert await _jobs_of(store, SID) == 0
            assert list(recordings.iterdir()) == []
            for index in store.keys.call_indexes:
                assert await store.client.zscore(index, SID) is None
        log = bridge.log()
        audit = [line for line in log.splitlines() if "call erased by admin token" in line]
        assert len(audit) == 1 and SID in audit[0] and ADMIN not in log
        assert "wrong admin token" in log and "invalid CallSid" in log and "no bearer token" in log
        assert any("refused" in line and SID in line for line in log.splitlines())
    finally:
        keys = [k async for k in store.client.scan_iter(match=store.keys.pattern(), count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.client.aclose()


async def test_erasure_is_disabled_without_an_admin_token(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_ADMIN_TOKEN="")
    async with (
        BridgeProcess(tmp_path / "bridge", env) as bridge,
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
    ):
        refused = await client.delete(f"/calls/{SID}", headers={"Authorization": "Bearer anything"})
        assert refused.status_code == 404
        assert (await client.get("/healthz")).status_code == 200
    assert any("erasure disabled" in line and SID in line for line in bridge.log().splitlines())


async def test_a_call_erased_while_it_is_carried_stays_gone_and_its_files_are_swept(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Finals, a recording and a call end that come after the erasure bring nothing back; the sweep
    after the call ended deletes what the recording wrote since."""
    recordings = tmp_path / "recordings"
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_ADMIN_TOKEN=ADMIN,
                     BRIDGE_RECORDING_DIR=str(recordings))  # fmt: skip
    store = Store(client_from_url(redis_url), prefix=redis_prefix, retention_seconds=3600)
    try:
        async with (
            BridgeProcess(tmp_path / "bridge", env) as bridge,
            httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
        ):
            async with TwilioStream(f"{bridge.ws}/twilio/media", SID, auth_token=TWILIO_TOKEN) as stream:
                await send(stream, speech(2.0, 7))

                async def has_finals() -> bool:
                    r = await client.get(f"/calls/{SID}")
                    return r.status_code == 200 and r.json()["finals"] > 0

                await poll(has_finals, "the first finals")
                erased = await client.delete(f"/calls/{SID}", headers={"Authorization": f"Bearer {ADMIN}"})
                assert erased.status_code == 200 and erased.json()["carried"] is True
                assert erased.json()["erased"]["files"] == [f"{SID}.wav"]  # the open recording too
                await send(stream, speech(2.0, 8), start_ms=2000)  # more audio, hence finals, after the erasure
                await stream.stop()

            async def ended() -> bool:
                return await bridge.metric("bridge_active_calls") == 0

            await poll(ended, "the call to end")
            assert await _keys_naming(store, SID) == [store.keys.tombstone(SID)]
            assert await _jobs_of(store, SID) == 0
            assert (await client.get(f"/calls/{SID}")).status_code == 404
            assert {p.name.split(".")[0] for p in recordings.iterdir()} <= {SID}
            report = await Sweeper(store, recordings, 3600).sweep_once()  # whatever it wrote since: erased too
            assert set(report.deleted) <= {SID}
            assert list(recordings.iterdir()) == []
    finally:
        keys = [k async for k in store.client.scan_iter(match=store.keys.pattern(), count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.client.aclose()
