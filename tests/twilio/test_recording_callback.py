"""``POST /twilio/recording``: signature-checked, queues a Twilio job; the worker fetches ``{RecordingUrl}.wav``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.routing import Route as StarletteRoute

from bridge.audio import parse_wav
from bridge.batch.worker import Worker
from bridge.retry import Backoff
from bridge.settings import Settings
from bridge.store import Store
from bridge.store.jobs import RecordingJob
from bridge.store.keys import Keys
from bridge.testing import TwilioRecordingsServer
from bridge.testing.twilio_recordings import Fetch, downmix
from bridge.twilio.auth import sign
from bridge.twilio.webhooks import recording_status
from tests.batch.conftest import FakeEngine
from tests.support import SHORT_CALL
from tests.support.fakehttp import FakeHttp, Route

CALL = SHORT_CALL
ACCOUNT, TOKEN = "AC3f1b2c4d5e6f708192a3b4c5d6e7f801", "secret-token"
URL = "http://testserver/twilio/recording"


@pytest.fixture
def twilio() -> Iterator[FakeHttp]:
    server = FakeHttp().start()
    try:
        yield server
    finally:
        server.stop()


def _app(store: Store, tmp_path: Path) -> Starlette:
    app = Starlette(routes=[StarletteRoute("/twilio/recording", recording_status, methods=["POST"])])
    # The stand-ins for api.twilio.com listen on the loopback interface (plain http is allowed there only).
    app.state.settings = Settings(twilio_account_sid=ACCOUNT, twilio_auth_token=TOKEN, recording_dir=tmp_path,
                                  recording_hosts=("127.0.0.1",))  # fmt: skip
    app.state.store = store
    return app


def _form(recording_url: str, status: str = "completed") -> dict[str, str]:
    return {"AccountSid": ACCOUNT, "CallSid": "CA5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d",
            "RecordingSid": "RE0f1e2d3c4b5a69788796a5b4c3d2e1f0", "RecordingUrl": recording_url,
            "RecordingStatus": status, "RecordingDuration": "15", "RecordingChannels": "2",
            "RecordingSource": "StartCallRecordingAPI", "RecordingTrack": "both"}  # fmt: skip


async def _post(app: Starlette, form: dict[str, str], signature: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.post(
            "/twilio/recording", content=urlencode(form),
            headers={"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": signature},
        )  # fmt: skip


async def _jobs(redis: aioredis.Redis, keys: Keys) -> list[RecordingJob]:
    entries: Any = await redis.xrange(keys.recordings)
    return [RecordingJob.from_fields(fields) for _, fields in entries]


async def test_rejects_bad_signature(store: Store, tmp_path: Path) -> None:
    form = _form("https://api.twilio.com/2010-04-01/Accounts/AC1/Recordings/RE1")
    resp = await _post(_app(store, tmp_path), form, sign("wrong-token", URL, form))
    assert resp.status_code == 403
    resp = await _post(_app(store, tmp_path), form, "")
    assert resp.status_code == 403 and "missing" in resp.text
    assert await _jobs(store.client, store.keys) == []


async def test_ignores_non_completed_and_refuses_bad_fields(store: Store, tmp_path: Path) -> None:
    app = _app(store, tmp_path)
    form = _form("https://api.twilio.com/x", status="absent")
    assert (await _post(app, form, sign(TOKEN, URL, form))).status_code == 204
    form = _form("javascript:alert(1)")
    assert (await _post(app, form, sign(TOKEN, URL, form))).status_code == 400
    assert await _jobs(store.client, store.keys) == []


RECORDING_SID = "RE0f1e2d3c4b5a69788796a5b4c3d2e1f0"
SID = "CA5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d"


async def _callback_then_worker(store: Store, tmp_path: Path, form: dict[str, str]) -> Worker:
    resp = await _post(_app(store, tmp_path), form, sign(TOKEN, URL, form))
    assert resp.status_code == 204
    async with httpx.AsyncClient() as http:
        worker = Worker(store, FakeEngine(), consumer="w1", block_ms=50, http=http, max_attempts=1,
                        twilio_account_sid=ACCOUNT, twilio_auth_token=TOKEN,
                        recording_hosts=("127.0.0.1",))  # fmt: skip
        assert await worker.process_one()
    return worker


async def test_dual_channel_conference_recording_yields_caller_and_agent_tracks(store: Store, tmp_path: Path) -> None:
    async with TwilioRecordingsServer(ACCOUNT, TOKEN) as twilio:
        url = twilio.add(RECORDING_SID, CALL.read_bytes())  # two channels: caller, agent
        form = {**_form(url), "RecordingSource": "StartConferenceRecordingAPI"}
        await _callback_then_worker(store, tmp_path, form)
    [job] = await _jobs(store.client, store.keys)
    assert job.source == "twilio" and job.recording_url == url and job.channels == 2
    assert twilio.fetches == [Fetch(RECORDING_SID, "2", 2)] and twilio.warnings == []
    assert Path(job.path).read_bytes() == CALL.read_bytes()
    t = await store.batch_transcript(SID)
    assert t is not None and t.job_key == f"twilio:{url}" and t.channels == 2
    assert sorted((u.track, u.channel) for u in t.utterances) == [("inbound", 0), ("outbound", 1)]


async def test_regression_a_plain_wav_of_a_dual_channel_recording_is_mono() -> None:
    """What the worker used to fetch: Twilio downmixes unless RequestedChannels=2 is asked."""
    async with TwilioRecordingsServer(ACCOUNT, TOKEN) as twilio, httpx.AsyncClient() as http:
        url = twilio.add(RECORDING_SID, CALL.read_bytes())
        resp = await http.get(url + ".wav", auth=(ACCOUNT, TOKEN))
    assert resp.status_code == 200 and parse_wav(resp.content).channels == 1
    assert twilio.fetches == [Fetch(RECORDING_SID, None, 1)]


async def test_mono_recording_is_not_asked_for_two_channels(store: Store, tmp_path: Path) -> None:
    async with TwilioRecordingsServer(ACCOUNT, TOKEN) as twilio:
        mono = downmix(CALL.read_bytes())
        url = twilio.add(RECORDING_SID, mono)
        form = {**_form(url), "RecordingChannels": "1", "RecordingTrack": "inbound"}
        await _callback_then_worker(store, tmp_path, form)
    assert twilio.fetches == [Fetch(RECORDING_SID, None, 1)]
    assert twilio.warnings == []  # no 16113
    t = await store.batch_transcript(SID)
    assert t is not None and [u.track for u in t.utterances] == ["inbound"]


async def test_a_downmixed_file_for_a_dual_channel_recording_is_refused(
    store: Store, tmp_path: Path, twilio: FakeHttp
) -> None:
    """A server that ignores RequestedChannels: the job fails with the reason, nothing mislabelled."""
    rec_path = f"/2010-04-01/Accounts/{ACCOUNT}/Recordings/{RECORDING_SID}"
    twilio.routes[("GET", rec_path + ".wav")] = Route(200, downmix(CALL.read_bytes()), "audio/x-wav")
    worker = await _callback_then_worker(store, tmp_path, _form(twilio.url + rec_path))
    assert [s.path for s in twilio.seen] == [rec_path + ".wav?RequestedChannels=2"]
    assert await store.batch_transcript(SID) is None
    dead: Any = await store.client.xrange(store.keys.recordings_dead)
    assert b"Twilio served 1 channel(s) of a 2-channel recording" in dead[0][1][b"reason"]
    [job] = await _jobs(store.client, store.keys)
    assert not Path(job.path).exists()  # not kept for the next attempt
    assert worker.metrics.registry.get_sample_value("bridge_batch_jobs_total", {"outcome": "dead"}) == 1


async def test_worker_refuses_to_send_credentials_elsewhere(store: Store, tmp_path: Path, twilio: FakeHttp) -> None:
    job = RecordingJob(call_sid="CA1", path=str(tmp_path / "x.wav"), source="twilio",
                       recording_url=twilio.url + "/evil")  # fmt: skip
    await store.enqueue_recording(job)
    worker = Worker(store, FakeEngine(), consumer="w1", block_ms=50, max_attempts=1,
                    twilio_account_sid=ACCOUNT, twilio_auth_token=TOKEN)  # fmt: skip
    assert await worker.process_one()
    assert twilio.seen == []
    dead: Any = await store.client.xrange(store.keys.recordings_dead)
    assert b"refusing to send Twilio credentials" in dead[0][1][b"reason"]


async def test_download_failure_is_retried(store: Store, tmp_path: Path, twilio: FakeHttp) -> None:
    job = RecordingJob(call_sid="CA1", path=str(tmp_path / "x.wav"), source="twilio",
                       recording_url=twilio.url + "/2010-04-01/Accounts/AC/Recordings/RE404")  # fmt: skip
    await store.enqueue_recording(job)
    worker = Worker(store, FakeEngine(), consumer="w1", block_ms=50, max_attempts=2,
                    backoff=Backoff(0.0, 0.0), recording_hosts=("127.0.0.1",))  # fmt: skip
    assert await worker.process_one() and await worker.process_one()
    dead: Any = await store.client.xrange(store.keys.recordings_dead)
    assert b"HTTP 404" in dead[0][1][b"reason"] and dead[0][1][b"attempts"] == b"2"
