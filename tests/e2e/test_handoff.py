"""Calls survive deploys and crashes: two ``bridge serve`` processes behind nginx, one Redis, one shared
recording directory, and the fake Twilio of :mod:`bridge.testing.twilio_api` (Streams REST API and a
60 s two-leg call that keeps streaming, opening new streams where the API asks).

The recognizer is the scripted Deepgram (its words are a function of the audio only, one final per
second of audio from the start of each connection), so the transcript of a run without any deploy is
known exactly: :func:`bridge.testing.scripted_finals` over the audio the call's first stream carried.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from bridge import events
from bridge.audio import read_wav
from bridge.store import Store
from bridge.store.jobs import RecordingJob
from bridge.testing import ScriptedDeepgramServer, scripted_finals
from bridge.testing.twilio import ACCOUNT_SID
from bridge.testing.twilio_api import FRAME_BYTES, FakeTwilio, SimulatedCall
from bridge.twilio.auth import sign
from tests.support.bridges import BridgeProcess
from tests.support.nginx import NGINX, Nginx

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (deploy/system-deps.sh)")

TOKEN = "handoff-auth-token"
FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "calls" / "short_call.wav"
#: The call's length, and when the instance carrying it goes away.
CALL_SECONDS = 60.0
AT = 20.0
Row = tuple[str, float, float, str]


@dataclasses.dataclass
class Stack:
    a: BridgeProcess
    b: BridgeProcess
    front: Nginx
    twilio: FakeTwilio
    recordings: Path


@pytest.fixture
async def stack(redis_url: str, store: Store, tmp_path: Path) -> AsyncIterator[Stack]:
    recordings = tmp_path / "recordings"  # shared, as with the batch workers (deploy/k8s: an RWX volume)
    async with (
        ScriptedDeepgramServer() as rec_a,
        ScriptedDeepgramServer() as rec_b,
        FakeTwilio(ACCOUNT_SID, TOKEN) as twilio,
    ):
        env = {"REDIS_URL": redis_url, "BRIDGE_REDIS_PREFIX": store.keys.prefix, "TWILIO_AUTH_TOKEN": TOKEN,
               "TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_API_BASE_URL": twilio.base,
               "BRIDGE_RECOGNIZER": "deepgram", "BRIDGE_RECOGNIZER_API_KEY": "scripted",
               "BRIDGE_RECORDING_DIR": str(recordings)}  # fmt: skip
        a = BridgeProcess(tmp_path / "a", {**env, "BRIDGE_RECOGNIZER_URL": rec_a.url})
        b = BridgeProcess(tmp_path / "b", {**env, "BRIDGE_RECOGNIZER_URL": rec_b.url})
        front = Nginx(tmp_path / "front", [a.port, b.port])
        for bridge in (a, b):  # Twilio reaches every instance through the one public URL
            bridge.env["BRIDGE_PUBLIC_URL"] = front.url
        try:
            await asyncio.gather(a.start(), b.start())
            with front:
                yield Stack(a, b, front, twilio, recordings)
        finally:
            a.stop()
            b.stop()


def _audio() -> dict[events.Track, bytes]:
    """The fixture call's two legs, looped to the call's length."""
    wav = read_wav(FIXTURE)
    n = int(CALL_SECONDS * 8000)
    legs = [wav.channel_bytes(i) for i in (0, 1)]
    inbound, outbound = ((leg * (n // len(leg) + 1))[:n] for leg in legs)
    return {"inbound": inbound, "outbound": outbound}


def _finals(track: str, audio: bytes, at: float = 0.0) -> list[Row]:
    """What the scripted recognizer makes of ``audio`` heard from call-clock second ``at`` on."""
    return [(track, round(at + s, 3), round(at + e, 3), w) for s, e, w in scripted_finals(audio)]


def _rows(finals: list[events.Final]) -> list[Row]:
    return sorted(((f.track, f.start, f.end, f.text) for f in finals), key=lambda r: (r[1], r[0]))


def _sort(rows: list[Row]) -> list[Row]:
    return sorted(rows, key=lambda r: (r[1], r[0]))


async def _place_call(stack: Stack, call_sid: str, audio: dict[events.Track, bytes]) -> SimulatedCall:
    """The voice webhook through nginx; the fake Twilio does what its TwiML says."""
    form = {"AccountSid": ACCOUNT_SID, "CallSid": call_sid, "From": "+15550100001", "To": "+15550100002",
            "CallStatus": "in-progress", "Direction": "inbound"}  # fmt: skip
    url = stack.front.url + "/twilio/voice"
    headers = {"content-type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sign(TOKEN, url, form)}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(url, content=urlencode(form), headers=headers)
    assert response.status_code == 200, response.text
    call = stack.twilio.call(call_sid, audio)
    await call.answer(response.text)
    return call


async def _carrier(stack: Stack) -> tuple[BridgeProcess, BridgeProcess]:
    """(the instance carrying the call, the other one)."""
    async with asyncio.timeout(30):
        while True:
            for one, other in ((stack.a, stack.b), (stack.b, stack.a)):
                if await one.metric("bridge_active_calls") == 1:
                    return one, other
            await asyncio.sleep(0.1)


async def _ended(store: Store, call_sid: str) -> None:
    for _ in range(600):
        info = await store.get_call(call_sid)
        if info is not None and info.status == "ended":
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"call {call_sid} never ended")


async def _job(store: Store, call_sid: str) -> RecordingJob:
    entries = await store.client.xrange(store.keys.recordings)
    (job,) = [j for _id, f in entries if (j := RecordingJob.from_fields(f)).call_sid == call_sid]
    return job


async def test_sigterm_hands_the_call_to_the_other_instance_without_losing_or_doubling_a_word(
    stack: Stack, store: Store
) -> None:
    call_sid = "CA" + "d1" * 16
    audio = _audio()
    call = await _place_call(stack, call_sid, audio)
    carrier, other = await _carrier(stack)
    await call.at(AT)
    carrier.terminate()
    assert await carrier.wait(60) == 0, carrier.log()
    async with asyncio.timeout(CALL_SECONDS + 30):
        await call.finished()
    await _ended(store, call_sid)

    first, second = call.history
    assert first.first_frame is not None and second.first_frame is not None
    assert first.ended == "stopped" and second.ended == "stopped"  # stopped through the API, then at hang-up
    assert second.parameters["handoff"] == "drain" and second.parameters["token"] == first.parameters["token"]
    assert {k: v for k, v in second.parameters.items() if k != "handoff"} == first.parameters
    heard = {t: a[first.first_frame * FRAME_BYTES : call.frames * FRAME_BYTES] for t, a in audio.items()}

    # Every final of the whole call, once: exactly the transcript of a run without the deploy.
    expected = _sort([row for track, a in heard.items() for row in _finals(track, a)])
    stored = await store.transcript(call_sid)
    assert _rows(stored) == expected
    assert len({f.id for f in stored}) == len(stored)

    info = await store.get_call(call_sid)
    assert info is not None and info.end_reason == "twilio stop" and info.stream_gaps == []
    assert set(info.stream_sids) == {first.sid, second.sid}
    state = await store.handoff_state(call_sid)
    cut = float(state.handoff_at)
    assert AT < cut < AT + 5 and cut == int(cut) and float(state.handoff_done) == cut
    assert state.handoff_probe == "" and "handoff_at" not in info.extra  # bookkeeping, not the call's document
    for track in ("inbound", "outbound"):  # each instance's recognizer served its side of the cut
        mine, *theirs = info.served[track]
        assert (mine.start, mine.end) == (0.0, cut) and [s.start for s in theirs] == [cut], info.served
        assert info.gaps.get(track, []) == []
    # The new stream was placed on the call clock exactly where its audio was heard.
    placed = state.handoff_origin.split()
    assert placed[0] == second.sid
    assert float(placed[1]) == pytest.approx((second.first_frame - first.first_frame) * 0.02, abs=1e-6)

    # One recording: the old instance wrote it up to the cut, the new one from there. No gap, nothing twice.
    job = await _job(store, call_sid)
    assert Path(job.path) == stack.recordings / f"{call_sid}.wav"
    wav = read_wav(job.path)
    assert wav.channel_bytes(0) == heard["inbound"] and wav.channel_bytes(1) == heard["outbound"]
    assert job.duration == pytest.approx(len(heard["inbound"]) / 8000, abs=0.001)
    assert await other.metric("bridge_calls_total") == 1
    assert any(path.endswith("/Streams.json") and status == 201 for path, status in stack.twilio.requests)


async def test_sigkill_leaves_one_reported_gap_and_the_rest_of_the_call_transcribed(
    stack: Stack, store: Store
) -> None:
    call_sid = "CA" + "d2" * 16
    audio = _audio()
    call = await _place_call(stack, call_sid, audio)
    carrier, other = await _carrier(stack)
    await call.at(AT)
    assert carrier.proc is not None
    carrier.proc.kill()
    async with asyncio.timeout(CALL_SECONDS + 30):
        await call.finished()
    await _ended(store, call_sid)

    first, second = call.history
    assert first.ended == "error" and second.ended == "stopped"
    assert second.parameters["handoff"] == "recover"
    assert first.first_frame is not None and second.first_frame is not None
    info = await store.get_call(call_sid)
    assert info is not None
    (gap,) = info.stream_gaps
    assert AT - 2 < gap.start < gap.end < gap.start + 5, gap
    async with httpx.AsyncClient(timeout=10) as client:  # what an operator reads, through the proxy
        document = (await client.get(f"{stack.front.url}/calls/{call_sid}")).json()
    assert document["stream_gaps"] == [{"start": gap.start, "end": gap.end}]
    for track in ("inbound", "outbound"):  # the dead instance served up to the gap, the new one after it
        lost, *replaced = info.served[track]
        assert (lost.start, lost.end) == (0.0, gap.start) and [s.start for s in replaced] == [gap.end], info.served
    assert await other.metric("bridge_stream_gaps_total") == 1
    assert await other.metric("bridge_stream_recoveries_total", result="started") == 1

    # Before the gap: per track, the killed instance's finals as in a clean run, up to its last second or so.
    base = first.first_frame * FRAME_BYTES
    stored = _rows(await store.transcript(call_sid))
    for track, a in audio.items():
        clean = _finals(track, a[base:])
        before = [r for r in stored if r[0] == track and r[1] < gap.end]
        assert before == clean[: len(before)]
        assert before[-1][2] >= gap.start - 1.5
    # After it: everything the replacement stream carried, placed where the call clock says it started.
    origin = gap.end
    error = origin - (second.first_frame - first.first_frame) * 0.02
    assert abs(error) <= 0.04, f"replacement placed {error * 1000:.0f} ms off"
    tail = {t: a[second.first_frame * FRAME_BYTES : call.frames * FRAME_BYTES] for t, a in audio.items()}
    after = _sort([row for track, a in tail.items() for row in _finals(track, a, origin)])
    assert [r for r in stored if r[1] >= gap.end] == after
    assert len(after) >= 2 * int(CALL_SECONDS - gap.end - 1)

    # The recording keeps the call's clock: the lost seconds are silence, the rest is the call.
    wav = read_wav((await _job(store, call_sid)).path)
    start = round(origin * 8000)
    for i, track in enumerate(("inbound", "outbound")):
        channel = wav.channel_bytes(i)
        assert channel[:8000 * 15] == audio[track][base : base + 8000 * 15]  # type: ignore[index]
        assert channel[start:] == tail[track]  # type: ignore[index]
