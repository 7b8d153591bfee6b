"""Calls never go untranscribed (issue 15): a two-leg call replayed through the bridge while its
Deepgram primary is dead, refuses the key, or stops answering mid-call is transcribed by the
ElevenLabs fallback, every final stored once, and the call record says who served what.

Both fakes hear the same word in the same second of audio (a checksum of it), so the stored
transcript must equal a clean run's whichever of them served which part.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.audio import FRAME_BYTES, MULAW_SILENCE, to_twilio_mulaw
from bridge.recognizers.deepgram.live import DeepgramRecognizer
from bridge.recognizers.elevenlabs.live import ElevenLabsRecognizer
from bridge.recognizers.resilience import RetryPolicy
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer, ScriptedScribeServer, scripted_finals
from bridge.twilio.replay import replay
from tests.support import SHORT_CALL

TOKEN = "fallback-token"
BPS = 8000
#: The call plays 8x real time, so pacing is off (tests/recognizers/test_pacing.py has it); the
#: primary gets 0.5 s to come back before its tracks move.
POLICY = RetryPolicy(keepalive_interval=1.0, backoff_base=0.05, backoff_cap=0.2, connect_timeout=1.0,
                     fallback_after=0.5, max_ingest_rate=float("inf"))  # fmt: skip

pytestmark = pytest.mark.timeout(120)


def _tracks() -> dict[str, bytes]:
    """The call as the bridge hears it: both legs, padded to whole frames as the replay sends them."""
    channels = to_twilio_mulaw(SHORT_CALL)
    size = -(-len(channels[0]) // FRAME_BYTES) * FRAME_BYTES
    return {t: c.ljust(size, bytes([MULAW_SILENCE])) for t, c in zip(("inbound", "outbound"), channels, strict=True)}


def _expected() -> list[tuple[str, float, float, str]]:
    rows = [(t, round(s, 3), round(e, 3), w) for t, audio in _tracks().items() for s, e, w in scripted_finals(audio)]
    return sorted(rows, key=lambda r: (r[1], r[0] != "inbound"))


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{s.getsockname()[1]}"


def _settings(redis_url: str, prefix: str, tmp_path: Path, **kw: Any) -> Settings:
    return dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=prefix, twilio_auth_token=TOKEN, recording_dir=tmp_path,
        recognizer="deepgram", fallback_recognizer="elevenlabs", **kw,
    )  # fmt: skip


async def _call(settings: Settings, call_sid: str, *, during: Any = None, **bridge: Any) -> dict[str, Any]:
    async with (
        running_bridge(settings, retry_policy=POLICY, **bridge) as (_app, http),
        httpx.AsyncClient(base_url=http, timeout=10) as client,
    ):
        player = asyncio.create_task(
            replay(SHORT_CALL, url=http.replace("http", "ws") + "/twilio/media", auth_token=TOKEN, call_sid=call_sid,
                   speed=8)
        )  # fmt: skip
        if during is not None:
            await during()
        await player
        for _ in range(800):
            info = (await client.get(f"/calls/{call_sid}")).json()
            if info.get("status") == "ended":
                break
            await asyncio.sleep(0.025)
        else:
            raise AssertionError("the call never ended")
        rows = (await client.get(f"/calls/{call_sid}/transcript")).json()
        metrics = (await client.get("/metrics")).text
    return {"info": info, "stored": [(r["track"], r["start"], r["end"], r["text"]) for r in rows], "metrics": metrics}


def _switches(metrics: str) -> float:
    line = 'bridge_recognizer_fallback_switches_total{from_recognizer="deepgram",to_recognizer="elevenlabs"}'
    return next((float(x.split()[-1]) for x in metrics.splitlines() if x.startswith(line)), 0.0)


def _assert_all_by_fallback(result: dict[str, Any]) -> None:
    assert result["stored"] == _expected()  # every final, once, in audio order
    duration = len(_tracks()["inbound"]) / BPS
    span = [{"recognizer": "elevenlabs", "start": 0.0, "end": duration, "fallback": True}]
    assert result["info"]["served"] == {"inbound": span, "outbound": span}
    assert result["info"]["gaps"] == {"inbound": [], "outbound": []}
    assert _switches(result["metrics"]) == 2


async def test_a_dead_primary_is_covered_by_the_fallback(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    async with ScriptedScribeServer() as scribe:
        settings = _settings(redis_url, redis_prefix, tmp_path, recognizer_url=_dead_url(),
                             fallback_recognizer_url=scribe.url)  # fmt: skip
        result = await _call(settings, "CA" + "f1" * 16)
    _assert_all_by_fallback(result)
    assert len(scribe.connections) == 2  # one session per track


async def test_a_primary_refusing_the_key_is_covered_by_the_fallback_at_once(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    async with ScriptedDeepgramServer(api_key="right") as primary, ScriptedScribeServer(api_key="xi") as scribe:
        settings = _settings(redis_url, redis_prefix, tmp_path, recognizer_url=primary.url, recognizer_api_key="wrong",
                             fallback_recognizer_url=scribe.url, fallback_recognizer_api_key="xi")  # fmt: skip
        result = await _call(settings, "CA" + "f2" * 16)
    _assert_all_by_fallback(result)
    assert primary.rejected == 2, "a 401 was retried"


async def test_a_primary_that_stops_answering_mid_call_is_covered_by_the_fallback(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    async with ScriptedDeepgramServer() as primary, ScriptedScribeServer() as scribe:
        # The bridge's clients, with WebSocket pings fast enough for a test to see the hang.
        dg = DeepgramRecognizer(primary.url, ping_interval=0.2, ping_timeout=0.3, open_timeout=0.5)

        async def hang_mid_call() -> None:
            await primary.wait_for_audio(2 * 5 * BPS, timeout=30)  # 5 s of each leg
            primary.hang()

        settings = _settings(redis_url, redis_prefix, tmp_path)
        result = await _call(settings, "CA" + "f3" * 16, during=hang_mid_call, recognizer=dg,
                             fallback=ElevenLabsRecognizer(scribe.url))  # fmt: skip
    assert result["stored"] == _expected()
    duration = len(_tracks()["inbound"]) / BPS
    for track in ("inbound", "outbound"):
        first, second = result["info"]["served"][track]
        assert (first["recognizer"], first["start"], first.get("fallback", False)) == ("deepgram", 0.0, False)
        assert (second["recognizer"], second["end"], second["fallback"]) == ("elevenlabs", duration, True)
        assert first["end"] == second["start"] >= 5.0 and second["start"] == int(second["start"])  # a final boundary
    assert result["info"]["gaps"] == {"inbound": [], "outbound": []}
    assert _switches(result["metrics"]) == 2
