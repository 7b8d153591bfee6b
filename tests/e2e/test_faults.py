"""Fault injection through the whole bridge: the stored transcript equals a clean run's, segment by segment.

The recognizer is the shipped ``ScriptedDeepgramServer`` (words are a function of the audio only), so
the clean run's finals are known exactly (:func:`bridge.testing.scripted_finals`). Each test plays a
call through a running bridge, breaks something in the middle, and compares what Redis holds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from bridge.recognizers.resilience import RetryPolicy
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer, TwilioStream, scripted_finals
from tests.support.faults import FaultProxy

TOKEN = "fault-token"
#: The calls are played ~20x faster than real time, which no vendor ingests: pacing is off here (see
#: tests/recognizers/test_pacing.py for it).
FAST = RetryPolicy(keepalive_interval=0.25, backoff_base=0.05, backoff_cap=0.2, connect_timeout=2.0,
                   max_ingest_rate=math.inf)  # fmt: skip

Fault = Callable[[], Awaitable[None]]
#: The bridge's /metrics text at the end of each call, by CallSid.
METRICS: dict[str, str] = {}


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def _speech(seconds: float, seed: int) -> bytes:
    rnd = random.Random(seed)
    return bytes(rnd.randrange(0, 255) for _ in range(int(seconds * 8000)))


def _settings(redis_url: str, prefix: str, tmp_path: Path, recognizer_url: str) -> Settings:
    return dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path, recognizer="deepgram", recognizer_url=recognizer_url,
    )


async def _play(
    settings: Settings,
    call_sid: str,
    tracks: dict[str, bytes],
    *,
    fault: Fault | None = None,
    pause: float = 0.0,
    pace: float = 0.004,
) -> list[tuple[str, float, float, str]]:
    """Play ``tracks`` (same length) as one stream; run ``fault`` halfway (then hold ``pause`` s)."""
    length = len(next(iter(tracks.values())))
    async with (
        running_bridge(settings, retry_policy=FAST) as (_app, http),
        httpx.AsyncClient(base_url=http, timeout=10) as client,
    ):
        url = http.replace("http://", "ws://") + "/twilio/media"
        async with TwilioStream(url, call_sid, auth_token=TOKEN, tracks=tuple(tracks)) as stream:
            hold_ms = 0
            for i in range(0, length, 160):
                if i == (length // 2) // 160 * 160:
                    if fault is not None:
                        await fault()
                    if pause:
                        await asyncio.sleep(pause)  # no frames at all: Twilio's timestamps still advance
                        hold_ms = int(pause * 1000)
                for track, audio in tracks.items():
                    await stream.media(track, i // 8 + hold_ms, audio[i : i + 160])
                if i % 1600 == 0:
                    await asyncio.sleep(pace)
            await stream.stop()

        async def ended() -> bool:
            r = await client.get(f"/calls/{call_sid}")
            return r.status_code == 200 and r.json().get("status") == "ended"

        for _ in range(800):
            if await ended():
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError("call never ended")
        rows = (await client.get(f"/calls/{call_sid}/transcript")).json()
        METRICS[call_sid] = (await client.get("/metrics")).text
    return [(r["track"], r["start"], r["end"], r["text"]) for r in rows]


def _expected(tracks: dict[str, bytes], hold: float = 0.0) -> list[tuple[str, float, float, str]]:
    rows = []
    for track, audio in tracks.items():
        half = (len(audio) // 2) // 160 * 160
        heard = audio[:half] + b"\xff" * int(hold * 8000) + audio[half:] if hold else audio
        rows += [(track, round(s, 3), round(e, 3), w) for s, e, w in scripted_finals(heard)]
    return sorted(rows, key=lambda r: (r[1], r[0] != "inbound"))


def _assert_same(stored: list[tuple[str, float, float, str]], expected: list[tuple[str, float, float, str]]) -> None:
    assert len(stored) == len(set(stored)), "a final was stored twice"
    missing = [r for r in expected if r not in stored]
    extra = [r for r in stored if r not in expected]
    assert not missing and not extra, f"missing={missing[:3]} extra={extra[:3]}"
    assert stored == expected  # and in audio order


@pytest.fixture
def scripted(scripted: ScriptedDeepgramServer) -> ScriptedDeepgramServer:
    """The shared scripted recognizer, closing idle connections after 1 s (NET-0001) like Deepgram after 10."""
    scripted.idle_timeout = 1.0
    return scripted


async def test_recognizer_connection_cut_mid_call(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    tracks = {"inbound": _speech(8, 1), "outbound": _speech(8, 2)}
    async with FaultProxy(scripted.port) as proxy:
        settings = _settings(redis_url, redis_prefix, tmp_path, proxy.url())

        async def cut() -> None:
            proxy.cut()

        stored = await _play(settings, "CA" + "c1" * 16, tracks, fault=cut)
        assert proxy.accepted >= 4  # both tracks reconnected
    _assert_same(stored, _expected(tracks))
    metrics = METRICS["CA" + "c1" * 16]
    assert _metric(metrics, "bridge_recognizer_reconnects_total") >= 2
    assert _metric(metrics, "bridge_recognizer_recovery_seconds_count") >= 2
    assert _metric(metrics, "bridge_recognizer_replayed_seconds_total") > 0


async def test_recognizer_killed_and_restarted_mid_call(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    tracks = {"inbound": _speech(8, 3)}
    settings = _settings(redis_url, redis_prefix, tmp_path, scripted.url)

    async def kill_and_restart() -> None:
        await scripted.stop()
        await asyncio.sleep(0.4)  # down: the bridge retries with backoff meanwhile
        await scripted.start()

    stored = await _play(settings, "CA" + "c2" * 16, tracks, fault=kill_and_restart)
    assert len(scripted.connections) >= 2
    _assert_same(stored, _expected(tracks))


async def test_recognizer_stalls_mid_call(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    tracks = {"inbound": _speech(6, 4)}
    async with FaultProxy(scripted.port) as proxy:
        settings = _settings(redis_url, redis_prefix, tmp_path, proxy.url())

        async def stall() -> None:
            proxy.stall(0.6)

        stored = await _play(settings, "CA" + "c3" * 16, tracks, fault=stall)
        assert proxy.held > 0, "the stall never met the call's traffic"
    _assert_same(stored, _expected(tracks))


async def test_connection_dropped_while_a_final_is_due(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    tracks = {"inbound": _speech(6, 5)}
    settings = _settings(redis_url, redis_prefix, tmp_path, scripted.url)
    scripted.drop_after(3 * 8000, before_final=True)  # the 3rd final is never sent on that connection
    stored = await _play(settings, "CA" + "c4" * 16, tracks)
    assert len(scripted.connections) >= 2
    _assert_same(stored, _expected(tracks))


async def test_silent_hold_without_frames_keeps_the_recognizer_session(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    # The scripted recognizer closes idle sockets after 1 s (NET-0001); the hold lasts 2.5 s.
    tracks = {"inbound": _speech(4, 6)}
    settings = _settings(redis_url, redis_prefix, tmp_path, scripted.url)
    stored = await _play(settings, "CA" + "c5" * 16, tracks, pause=2.5)
    assert len(scripted.connections) == 1, "the hold ended the recognizer session"
    assert "KeepAlive" in scripted.connections[0].controls
    _assert_same(stored, _expected(tracks, hold=2.5))


async def test_redis_outage_mid_call_loses_nothing_and_writes_once(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    parts = urlsplit(redis_url)
    if parts.scheme != "redis" or parts.port is None:
        pytest.skip("needs a TCP redis URL")
    tracks = {"inbound": _speech(8, 7), "outbound": _speech(8, 8)}
    async with FaultProxy(parts.port, parts.hostname or "127.0.0.1") as proxy:
        proxied = f"redis://127.0.0.1:{proxy.port}{parts.path or ''}"
        settings = _settings(proxied, redis_prefix, tmp_path, scripted.url)

        async def outage() -> None:
            await proxy.pause()
            proxy.cut()

            async def back() -> None:
                await asyncio.sleep(1.5)
                await proxy.resume()

            asyncio.get_running_loop().create_task(back())

        stored = await _play(settings, "CA" + "c6" * 16, tracks, fault=outage)
        assert proxy.cut_connections > 0, "the outage cut no Redis connection"
    assert _metric(METRICS["CA" + "c6" * 16], "bridge_store_outages_total") >= 1, "the bridge never saw Redis go"
    _assert_same(stored, _expected(tracks))
