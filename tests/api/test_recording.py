"""``GET /calls/{sid}/recording`` over real HTTP: the subscriber auth of every call endpoint, and never
a recording that has not been through the batch pass's redaction."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bridge.audio import mulaw_wav_bytes
from bridge.live import auth as tokens
from bridge.store import Store
from bridge.transcripts import BatchTranscript, CallQuality
from tests.support.served import Serve

SECRET = "recording-secret"
A = "CA0000000000000000000000000000a1a1"
B = "CA0000000000000000000000000000b2b2"


def _batch(sid: str, path: Path, duration: float) -> BatchTranscript:
    return BatchTranscript(call_sid=sid, engine="fake", model="fake", duration=duration, channels=2,
                           tracks=["inbound", "outbound"], utterances=[], recording=str(path))  # fmt: skip


async def test_the_recording_is_served_only_once_redacted_and_only_to_its_subscribers(
    store: Store, served: Serve, tmp_path: Path
) -> None:
    path = tmp_path / f"{A}.wav"
    await store.call_started(A, stream_sid="MZa", tracks=["inbound", "outbound"], started_at=time.time())
    await store.call_started(B, stream_sid="MZb", tracks=["inbound"], started_at=time.time())
    token_a = tokens.mint(SECRET, [A], ttl=60)
    auth = {"Authorization": f"Bearer {token_a}"}
    async with served(subscriber_secret=SECRET, recording_dir=tmp_path) as srv, \
            httpx.AsyncClient(base_url=srv.http) as client:  # fmt: skip
        url = f"/calls/{A}/recording"
        assert (await client.get(url)).status_code == 401
        assert (await client.get(f"/calls/{B}/recording", headers=auth)).status_code == 403
        assert (await client.get("/calls/CAnope/recording", headers=auth)).status_code == 400
        assert (await client.get(url, headers=auth)).status_code == 404  # no file yet
        path.write_bytes(mulaw_wav_bytes([b"\x10" * 16000, b"\x20" * 16000]))
        live = await client.get(url, headers=auth)
        assert live.status_code == 409 and "not redacted" in live.json()["error"]  # the call is live
        await store.call_ended(A, ended_at=time.time())
        assert (await client.get(url, headers=auth)).status_code == 409  # ended, batch pass not run yet
        quality = CallQuality(call_sid=A, wer=None, tracks=[], flagged=False, threshold=0.3, live_finals=0)
        await store.save_batch_result(_batch(A, path, 2.0), quality)
        got = await client.get(url, headers=auth)
        assert got.status_code == 200 and got.content == path.read_bytes()
        assert got.headers["content-type"] == "audio/wav"
        # The call came back under its CallSid and its recording grew: unredacted audio again.
        path.write_bytes(mulaw_wav_bytes([b"\x10" * 48000, b"\x20" * 48000]))
        assert (await client.get(url, headers=auth)).status_code == 409
