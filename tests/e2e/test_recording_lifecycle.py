"""A call's recording and its end, through a running ``bridge serve`` (issue #10, items 1, 2 and 4).

- A recording that cannot be written (here the bridge process gets a file size limit) never stops the
  live transcript: the call goes on, ends normally, and says its recording failed.
- A CallSid that comes back after its call ended keeps every byte of the first recording and every
  final of both; two streams of one call at once: one stopping does not end the other.
- Timestamp leaps cannot make the recording (or the recognizer's audio) grow faster than real time.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import httpx

from bridge.audio import read_wav
from bridge.batch.worker import job_key
from bridge.store import client_from_url
from bridge.store.jobs import RecordingJob
from bridge.store.keys import Keys
from bridge.testing import ScriptedDeepgramServer, TwilioStream
from tests.support.bridges import TWILIO_TOKEN, BridgeProcess, bridge_env
from tests.support.calls import poll, send, send_both, speech, words

TOKEN = TWILIO_TOKEN




async def _jobs(redis_url: str, prefix: str) -> list[RecordingJob]:
    client = client_from_url(redis_url)
    try:
        entries: Any = await client.xrange(Keys(prefix).recordings)
    finally:
        await client.aclose()
    return [RecordingJob.from_fields(fields) for _id, fields in entries]


async def _call(client: httpx.AsyncClient, call_sid: str) -> dict[str, Any]:
    r = await client.get(f"/calls/{call_sid}")
    return r.json() if r.status_code == 200 else {}


def _data(path: Path) -> bytes:
    """The audio bytes of one of the bridge's recordings (its header is 58 bytes)."""
    wav = read_wav(path)
    assert wav.is_mulaw_8k
    return wav.data


async def test_a_recording_write_failure_keeps_the_live_transcript_and_ends_the_call(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: EFBIG on the recording closed the stream 1011 at ~9 s and left a zombie call."""
    limit = 150 * 1024  # a stereo call reaches it after ~9.4 s of audio

    def file_size_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    recordings = tmp_path / "recordings"
    call_sid = "CA" + "f5" * 16
    inbound, outbound = speech(14.0, 1), speech(14.0, 2)
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_RECORDING_DIR=str(recordings))
    async with (
        BridgeProcess(tmp_path / "bridge", env, preexec=file_size_limit) as bridge,
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
    ):
        async with TwilioStream(f"{bridge.ws}/twilio/media", call_sid, auth_token=TOKEN,
                                tracks=("inbound", "outbound")) as stream:  # fmt: skip
            await send_both(stream, inbound, outbound)
            await stream.stop()
            assert stream.ws is not None and stream.ws.close_code == 1000  # not 1011

        async def ended() -> bool:
            return (await _call(client, call_sid)).get("status") == "ended"

        await poll(ended, "the call to end")
        transcript = (await client.get(f"/calls/{call_sid}/transcript")).json()
        info = await _call(client, call_sid)
        ready = (await client.get("/readyz")).json()
        failures = await bridge.metric("bridge_recording_failures_total")
        active = await bridge.metric("bridge_active_calls")
    # Every word of both legs, past the moment the recording stopped.
    heard = {t: [f["text"] for f in transcript if f["track"] == t] for t in ("inbound", "outbound")}
    assert heard == {"inbound": words(inbound), "outbound": words(outbound)}
    assert info["extra"]["recording"] == "failed" and "File too large" in info["extra"]["recording_error"]
    assert failures == 1
    assert ready["calls"] == 0 and active == 0
    # The call's keys expire like any ended call's; no batch job for a partial recording.
    client_ = client_from_url(redis_url)
    try:
        keys = Keys(redis_prefix)
        assert 0 < await client_.ttl(keys.call(call_sid)) <= 604800
        assert 0 < await client_.ttl(keys.finals(call_sid))
    finally:
        await client_.aclose()
    assert await _jobs(redis_url, redis_prefix) == []
    # What reached the disk is a readable WAV whose header covers it.
    wav = read_wav(recordings / f"{call_sid}.wav")
    assert wav.channels == 2 and 8.0 < wav.duration < 10.0
    assert "Task exception was never retrieved" not in bridge.log()
    assert bridge.exit_code == 0


async def test_a_reused_callsid_keeps_the_first_recording_and_every_final(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: a second stream for an ended CallSid truncated its recording ("wb") and restarted
    final ids at 0, so its finals could collide with the first's."""
    recordings = tmp_path / "recordings"
    call_sid = "CA" + "2b" * 16
    first, second = speech(3.0, 3), speech(2.0, 4)
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_RECORDING_DIR=str(recordings))
    async with (
        BridgeProcess(tmp_path / "bridge", env) as bridge,
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
    ):
        url = f"{bridge.ws}/twilio/media"

        async def ended_with(n: int) -> bool:
            info = await _call(client, call_sid)
            return info.get("status") == "ended" and info.get("finals") == n

        async with TwilioStream(url, call_sid, auth_token=TOKEN) as s1:
            await send(s1, first)
            await s1.stop()
        await poll(lambda: ended_with(3), "the first call to end")
        path = recordings / f"{call_sid}.wav"
        assert _data(path) == first

        async with TwilioStream(url, call_sid, auth_token=TOKEN) as s2:  # the same CallSid, later
            await send(s2, second)
            await s2.stop()
        await poll(lambda: ended_with(5), "the second call to end")
        transcript = (await client.get(f"/calls/{call_sid}/transcript")).json()

    assert [f["text"] for f in transcript] == words(first) + words(second)
    assert len({f["id"] for f in transcript}) == 5
    assert [f["start"] for f in transcript] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert _data(path) == first + second  # every byte of the first stream kept, the second appended
    jobs = await _jobs(redis_url, redis_prefix)
    assert [(j.path, j.duration) for j in jobs] == [(str(path), 3.0), (str(path), 5.0)]
    assert len({job_key(j) for j in jobs}) == 2  # the longer recording is not taken for a duplicate


async def test_one_of_two_concurrent_streams_stopping_does_not_end_the_call(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: a ``stop`` on one stream ended the call while another stream was still sending."""
    call_sid = "CA" + "c2" * 16
    a, b1, b2 = speech(2.0, 5), speech(1.0, 6), speech(2.0, 7)
    env = bridge_env(redis_url, redis_prefix, scripted.url)
    async with (
        BridgeProcess(tmp_path / "bridge", env) as bridge,
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
    ):
        url = f"{bridge.ws}/twilio/media"

        async def finals(n: int) -> bool:
            return (await _call(client, call_sid)).get("finals", 0) >= n

        async with TwilioStream(url, call_sid, auth_token=TOKEN) as s1:
            await send(s1, a)
            await poll(lambda: finals(1), "the first stream's words")
            async with TwilioStream(url, call_sid, auth_token=TOKEN) as s2:
                await send(s2, b1)
                await s1.stop()
                assert (await _call(client, call_sid))["status"] == "active"
                await send(s2, b2, start_ms=1000)
                await s2.stop()

        async def ended() -> bool:
            return (await _call(client, call_sid)).get("status") == "ended"

        await poll(ended, "the call to end")
        texts = [f["text"] for f in (await client.get(f"/calls/{call_sid}/transcript")).json()]
    assert texts == words(a) + words(b1 + b2)


async def test_timestamp_leaps_do_not_grow_the_recording_or_the_recognizer_audio(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """Regression: ten 200-byte frames, each 599 s after the last, made a 43 MB WAV (the cap was per
    jump, not per call) and sent the same synthetic silence to the recognizer."""
    recordings = tmp_path / "recordings"
    call_sid = "CA" + "4a" * 16
    payload = 200
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_RECORDING_DIR=str(recordings))
    async with (
        BridgeProcess(tmp_path / "bridge", env) as bridge,
        httpx.AsyncClient(base_url=bridge.url, timeout=10) as client,
    ):
        async with TwilioStream(f"{bridge.ws}/twilio/media", call_sid, auth_token=TOKEN) as stream:
            for i in range(10):
                await stream.media("inbound", i * 599_000, bytes([0x10 + i]) * payload)
            await stream.stop()

        async def ended() -> bool:
            return (await _call(client, call_sid)).get("status") == "ended"

        await poll(ended, "the call to end")
    size = (recordings / f"{call_sid}.wav").stat().st_size
    # The frames themselves, plus at most the silence the call's few seconds of wall clock allow.
    assert size < 100_000
    assert scripted.received_bytes < 100_000
    assert bytes([0x19]) * payload in _data(recordings / f"{call_sid}.wav")  # the last frame is kept
