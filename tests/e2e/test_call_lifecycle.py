"""Call identity across Twilio stream reconnects, and the graceful drain on SIGTERM (issue #4)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.store import Store, client_from_url
from bridge.store.jobs import RecordingJob
from bridge.store.keys import Keys
from bridge.testing import ScriptedDeepgramServer, TwilioStream, window_word

TOKEN = "lifecycle-token"


def _audio(seconds: float, seed: int) -> bytes:
    # Distinct bytes per second, so every scripted final has its own word.
    return bytes((seed * 7919 + i * 31 + (i // 8000) * 101) % 255 for i in range(int(seconds * 8000)))


async def _send(stream: TwilioStream, audio: bytes) -> None:
    for i in range(0, len(audio), 160):
        await stream.media("inbound", i // 8, audio[i : i + 160])


async def _poll(predicate: object, what: str, tries: int = 400) -> None:
    for _ in range(tries):
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_new_stream_for_the_same_call_continues_its_transcript(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=scripted.url,
    )
    call_sid = "CA" + "1d" * 16
    first, second = _audio(3.0, 1), _audio(2.0, 2)
    async with running_bridge(settings) as (_app, http), httpx.AsyncClient(base_url=http) as client:
        url = http.replace("http://", "ws://") + "/twilio/media"

        async def finals(n: int) -> bool:
            r = await client.get(f"/calls/{call_sid}/transcript")
            return r.status_code == 200 and len(r.json()) >= n

        async with TwilioStream(url, call_sid, auth_token=TOKEN) as s1:
            await _send(s1, first)
            await _poll(lambda: finals(2), "the first stream's finals")
            await s1.drop()  # network loss: no Twilio stop
        await _poll(lambda: finals(3), "the last words of the dropped stream")
        async with TwilioStream(url, call_sid, auth_token=TOKEN) as s2:
            await _send(s2, second)
            await s2.stop()

        async def ended() -> bool:
            return (await client.get(f"/calls/{call_sid}")).json().get("status") == "ended"

        await _poll(ended, "the call to end")
        transcript = (await client.get(f"/calls/{call_sid}/transcript")).json()
        info = (await client.get(f"/calls/{call_sid}")).json()

    words = [f["text"] for f in transcript]
    expected_first = [window_word(first[i : i + 8000]) for i in range(0, len(first), 8000)]
    expected_second = [window_word(second[i : i + 8000]) for i in range(0, len(second), 8000)]
    assert words == expected_first + expected_second
    starts = [f["start"] for f in transcript]
    assert starts[:3] == [0.0, 1.0, 2.0]
    assert starts[3] >= 3.0 and starts[4] == pytest.approx(starts[3] + 1.0, abs=0.002)
    assert len(set(info["stream_sids"])) == 2
    assert info["status"] == "ended"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_mid_sentence_finalizes_flushes_and_queues_before_exit(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "BRIDGE_REDIS_PREFIX": redis_prefix,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "BRIDGE_RECOGNIZER": "deepgram",
        "BRIDGE_RECOGNIZER_API_KEY": "scripted",
        "BRIDGE_RECOGNIZER_URL": scripted.url,
        "BRIDGE_RECORDING_DIR": str(tmp_path),
        "BRIDGE_LOG_LEVEL": "info",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    call_sid = "CA" + "5e" * 16
    audio = _audio(2.5, 3)
    http = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=http, timeout=5) as client:

            async def up() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await _poll(up, "the bridge to start", tries=800)
            stream = TwilioStream(f"ws://127.0.0.1:{port}/twilio/media", call_sid, auth_token=TOKEN)
            await stream.__aenter__()
            await _send(stream, audio)

            async def received() -> bool:
                return scripted.received_bytes >= len(audio)

            await _poll(received, "the audio to reach the recognizer")
            scripted.stall(1.5)  # the last final takes a while: the drain must wait for it
            proc.send_signal(signal.SIGTERM)

            async def unready() -> bool:
                try:
                    return (await client.get("/readyz")).status_code == 503
                except httpx.TransportError:
                    return False

            await _poll(unready, "readiness to turn unready during the drain")
            with pytest.raises((websockets.exceptions.InvalidStatus, websockets.exceptions.ConnectionClosed,
                                OSError)):
                async with TwilioStream(f"ws://127.0.0.1:{port}/twilio/media", "CA" + "77" * 16,
                                        auth_token=TOKEN) as late:
                    await late.ws.recv()  # type: ignore[union-attr]
        code = await asyncio.to_thread(proc.wait, 60)
        assert code == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    client = client_from_url(redis_url)
    store = Store(client, prefix=redis_prefix, retention_seconds=3600)
    try:
        words = [f.text for f in await store.transcript(call_sid)]
        info = await store.get_call(call_sid)
        entries = await client.xrange(Keys(redis_prefix).recordings)
    finally:
        await client.aclose()
    assert words == [window_word(audio[i : i + 8000]) for i in range(0, len(audio), 8000)]
    assert info is not None and info.status == "ended"
    jobs = [RecordingJob.from_fields(f) for _id, f in entries]
    assert [j.call_sid for j in jobs] == [call_sid]
    assert jobs[0].duration == pytest.approx(2.5, abs=0.03)


async def test_a_bogus_timestamp_leap_neither_crashes_nor_floods_the_recognizer(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    settings = dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=scripted.url,
    )
    call_sid = "CA" + "1e" * 16
    audio = _audio(2.0, 4)
    async with running_bridge(settings) as (_app, http), httpx.AsyncClient(base_url=http) as client:
        url = http.replace("http://", "ws://") + "/twilio/media"
        async with TwilioStream(url, call_sid, auth_token=TOKEN) as s:
            await s.media("inbound", 0, audio[:160])
            await s.media("inbound", 10**9, audio[160:320])  # eleven days later, says the frame
            for i in range(320, len(audio), 160):
                await s.media("inbound", 10**9 + (i - 160) // 8, audio[i : i + 160])
            await s.stop()

        async def ended() -> bool:
            return (await client.get(f"/calls/{call_sid}")).json().get("status") == "ended"

        await _poll(ended, "the call to end")
        words = [f["text"] for f in (await client.get(f"/calls/{call_sid}/transcript")).json()]
    assert scripted.received_bytes < 10 * 8000
    assert words == [window_word(audio[i : i + 8000]) for i in range(0, len(audio), 8000)]
