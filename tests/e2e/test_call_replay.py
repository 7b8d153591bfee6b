"""End to end: a two-track fixture call replayed as Twilio would send it, through a running bridge.

Real sockets everywhere (uvicorn, websockets), real Redis. The deterministic run uses the shipped
``ScriptedDeepgramServer`` (its words depend only on the audio), so "every final exactly once" can be
checked exactly; the embedded run uses the real Whisper recognizer and checks the words.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from bridge import events
from bridge.audio import to_twilio_mulaw as read_mulaw_wav
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.store import client_from_url
from bridge.store.jobs import RecordingJob
from bridge.store.keys import Keys
from bridge.testing import ScriptedDeepgramServer, scripted_finals
from bridge.twilio.replay import replay
from tests.support import SHORT_CALL, SUPPORT_CALL

TOKEN = "e2e-auth-token"


def _settings(redis_url: str, prefix: str, tmp_path: Path, **kw: Any) -> Settings:
    return dataclasses.replace(
        Settings(),
        port=0,
        redis_url=redis_url,
        redis_prefix=prefix,
        twilio_auth_token=TOKEN,
        recording_dir=tmp_path / "recordings",
        **kw,
    )


async def _subscribe(ws_base: str, call_sid: str, received: list[events.LiveEvent]) -> None:
    async with websockets.connect(f"{ws_base}/calls/{call_sid}/live") as sub:
        async for raw in sub:
            ev = events.decode(raw)
            received.append(ev)
            if isinstance(ev, events.CallEnded):
                return


async def _wait_for_call(client: httpx.AsyncClient, call_sid: str) -> None:
    for _ in range(400):
        if (await client.get(f"/calls/{call_sid}")).status_code == 200:
            return
        await asyncio.sleep(0.025)
    raise AssertionError("the call never appeared")


async def _run_call(
    settings: Settings, wav: Path, call_sid: str, speed: float
) -> tuple[list[events.LiveEvent], list[dict[str, Any]], dict[str, Any], str]:
    async with running_bridge(settings) as (_app, http):
        ws_base = http.replace("http://", "ws://")
        received: list[events.LiveEvent] = []
        async with httpx.AsyncClient(base_url=http, timeout=10) as client:
            player = asyncio.create_task(
                replay(wav, url=f"{ws_base}/twilio/media", auth_token=TOKEN, call_sid=call_sid, speed=speed)
            )
            await _wait_for_call(client, call_sid)
            await asyncio.wait_for(_subscribe(ws_base, call_sid, received), timeout=120)
            await player
            transcript = (await client.get(f"/calls/{call_sid}/transcript")).json()
            info = (await client.get(f"/calls/{call_sid}")).json()
            text = (await client.get(f"/calls/{call_sid}/transcript", params={"format": "text"})).text
    return received, transcript, info, text


async def test_sixty_second_two_track_call_stores_every_final_once(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    wav = SUPPORT_CALL
    settings = _settings(redis_url, redis_prefix, tmp_path, recognizer="deepgram", recognizer_url=scripted.url)
    call_sid = "CA" + "e2e0" * 8
    received, transcript, info, text = await _run_call(settings, wav, call_sid, speed=0)

    # Every final in Redis exactly once, and exactly what the recognizer finalized.
    ids = [f["id"] for f in transcript]
    assert len(ids) == len(set(ids)) and ids
    starts = [(f["start"], f["track"]) for f in transcript]
    assert starts == sorted(starts, key=lambda s: (s[0], s[1] != "inbound"))
    assert {f["track"] for f in transcript} == {"inbound", "outbound"}
    # Segment by segment, exactly the finals a clean run of each track's audio yields.
    channels = read_mulaw_wav(wav)
    for track, audio in zip(("inbound", "outbound"), channels, strict=True):
        padded = audio.ljust(-(-len(audio) // 160) * 160, b"\xff")
        expected = [(round(s, 3), round(e, 3), w) for s, e, w in scripted_finals(padded)]
        stored = [(f["start"], f["end"], f["text"]) for f in transcript if f["track"] == track]
        assert stored == expected, track

    # The live subscriber saw each stored final once (snapshot + live, no gap, no duplicate).
    live_finals = [e for e in received if isinstance(e, events.Final)]
    assert sorted(e.id for e in live_finals) == sorted(ids)
    seqs = [e.seq for e in live_finals]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert isinstance(received[-1], events.CallEnded)

    assert info["call_sid"] == call_sid
    assert sorted(info["tracks"]) == ["inbound", "outbound"]
    assert "Caller:" in text and "Agent:" in text

    # The recording: stereo mu-law, the call's duration, playable by sox.
    rec = settings.recording_dir / f"{call_sid}.wav"
    assert rec.exists()
    if shutil.which("soxi"):
        duration = float(subprocess.run(["soxi", "-D", str(rec)], capture_output=True, text=True,
                                        check=True).stdout)
        assert duration == pytest.approx(60.81, abs=0.05)
        assert subprocess.run(["soxi", "-c", str(rec)], capture_output=True, text=True).stdout.strip() == "2"

    # A job on the recordings stream for the batch pass.
    client = client_from_url(redis_url)
    try:
        entries = await client.xrange(Keys(redis_prefix).recordings)
    finally:
        await client.aclose()
    jobs = [RecordingJob.from_fields(fields) for _id, fields in entries]
    job = next(j for j in jobs if j.call_sid == call_sid)
    assert job.channels == 2 and job.encoding == "mulaw" and job.sample_rate == 8000
    assert Path(job.path) == rec.resolve()
    assert job.duration == pytest.approx(60.81, abs=0.05)


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


async def test_embedded_recognizer_transcribes_the_fixture_call(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    wav = SHORT_CALL
    reference = json.loads(SHORT_CALL.with_suffix(".json").read_text())
    settings = _settings(redis_url, redis_prefix, tmp_path, recognizer="embedded", embedded_model="tiny.en")
    call_sid = "CA" + "e2e1" * 8
    received, transcript, _info, _text = await _run_call(settings, wav, call_sid, speed=4.0)

    assert any(isinstance(e, events.Partial) for e in received), "no live partials"
    for track in ("inbound", "outbound"):
        heard = set(_words(" ".join(f["text"] for f in transcript if f["track"] == track)))
        said = _words(" ".join(t["text"] for t in reference["turns"] if t["track"] == track))
        hits = sum(1 for w in said if w in heard)
        assert hits / len(said) >= 0.6, (track, heard, said)
    ids = [f["id"] for f in transcript]
    assert len(ids) == len(set(ids))
