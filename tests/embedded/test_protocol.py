"""Deepgram live protocol behaviour of the embedded recognizer, over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx
import msgspec
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from bridge.audio import read_wav
from bridge.recognizers.deepgram import wire as dg
from tests.support import FIXTURES

pytestmark = pytest.mark.timeout(60)


TELEPHONY = "encoding=mulaw&sample_rate=8000&channels=1&model=nova-3"


def clip_audio(index: int) -> bytes:
    return read_wav(FIXTURES / "audio" / "clips" / f"{index:02d}.wav").channel_bytes(0)


async def send_fast(ws: ClientConnection, audio: bytes, chunk: int = 1600) -> None:
    """Stream faster than real time (tests are not benchmarks)."""
    for i in range(0, len(audio), chunk):
        await ws.send(audio[i : i + chunk])
        await asyncio.sleep(0.005)


async def drain(ws: ClientConnection) -> list[dg.ServerMessage]:
    """Read until the server closes (any close code)."""
    out: list[dg.ServerMessage] = []
    with contextlib.suppress(websockets.ConnectionClosedError):
        async for raw in ws:
            assert isinstance(raw, str), "the server sends JSON text frames"
            out.append(dg.decode_server(raw))
    return out


def http_url(ws_url: str) -> str:
    return ws_url.replace("ws://", "http://", 1)


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("encoding=opus&sample_rate=8000", "encoding"),
        ("encoding=mulaw&sample_rate=44100", "sample_rate"),
        ("encoding=mulaw&sample_rate=8000&channels=2", "channels"),
        ("encoding=mulaw&sample_rate=8000&interim_results=maybe", "interim_results"),
        ("encoding=mulaw&sample_rate=8000&endpointing=soon", "endpointing"),
        ("encoding=mulaw&sample_rate=8000&bogus=1", "bogus"),
        ("encoding=mulaw&sample_rate=8000&language=fr", "language"),
    ],
)
async def test_bad_params_get_400_with_reason(recognizer_url: str, query: str, needle: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with connect(f"{recognizer_url}/v1/listen?{query}"):
            pass
    response = info.value.response
    assert response.status_code == 400
    assert needle in response.headers["dg-error"]
    assert response.headers["dg-request-id"]


async def test_wrong_or_missing_key_gets_401(keyed_recognizer_url: str) -> None:
    for headers in ({}, {"Authorization": "Token wrong"}):
        with pytest.raises(websockets.InvalidStatus) as info:
            async with connect(f"{keyed_recognizer_url}/v1/listen?{TELEPHONY}", additional_headers=headers):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["dg-request-id"]


async def test_key_in_header_or_subprotocol_is_accepted(keyed_recognizer_url: str) -> None:
    url = f"{keyed_recognizer_url}/v1/listen?{TELEPHONY}"
    async with connect(url, additional_headers={"Authorization": "Token sekret"}) as ws:
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
    assert isinstance(messages[-1], dg.Metadata)
    async with connect(url, subprotocols=["token", "sekret"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "token"
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await drain(ws)
    assert isinstance(messages[-1], dg.Metadata)


async def test_keepalive_gets_no_reply_and_close_stream_ends_with_metadata(recognizer_url: str) -> None:
    async with connect(f"{recognizer_url}/v1/listen?{TELEPHONY}") as ws:
        await ws.send(b"\xff" * 1600)
        await ws.send(dg.encode(dg.KeepAlive()).decode())
        await ws.send(dg.encode(dg.CloseStream()).decode())
        messages = await drain(ws)
        assert ws.close_code == 1000
    assert [type(m) for m in messages] == [dg.Metadata]
    meta = messages[0]
    assert isinstance(meta, dg.Metadata)
    assert meta.duration == pytest.approx(0.2)
    assert meta.channels == 1 and meta.request_id


async def test_close_stream_flushes_finals_then_metadata(recognizer_url: str, clips: list[Any]) -> None:
    audio = clip_audio(0)
    cut = len(audio) * 3 // 4  # stop mid-utterance: only the close can produce the final
    async with connect(f"{recognizer_url}/v1/listen?{TELEPHONY}&endpointing=false") as ws:
        await send_fast(ws, audio[:cut])
        await ws.send(dg.encode(dg.CloseStream()).decode())
        messages = await drain(ws)
        assert ws.close_code == 1000
    assert isinstance(messages[-1], dg.Metadata)
    finals = [m for m in messages if isinstance(m, dg.Results) and m.is_final]
    text = " ".join(m.channel.alternatives[0].transcript for m in finals)
    assert "balance" in text.lower()
    assert all(isinstance(m, dg.Results) for m in messages[:-1])


async def test_finalize_produces_from_finalize_final(recognizer_url: str) -> None:
    audio = clip_audio(1)
    cut = len(audio) * 2 // 3
    async with connect(f"{recognizer_url}/v1/listen?{TELEPHONY}&endpointing=false") as ws:
        await send_fast(ws, audio[:cut])
        await ws.send(dg.encode(dg.Finalize()).decode())
        result: dg.Results | None = None
        while result is None:
            msg = dg.decode_server(await asyncio.wait_for(ws.recv(), 30))
            if isinstance(msg, dg.Results) and msg.from_finalize:
                result = msg
        assert result.is_final
        assert "thank" in result.channel.alternatives[0].transcript.lower()
        # Finalize with nothing pending still answers, with an empty final.
        await ws.send(dg.encode(dg.Finalize()).decode())
        msg = dg.decode_server(await asyncio.wait_for(ws.recv(), 30))
        assert isinstance(msg, dg.Results) and msg.from_finalize and msg.is_final
        assert msg.channel.alternatives[0].transcript == ""
        await ws.send(dg.encode(dg.CloseStream()).decode())
        rest = await drain(ws)
    assert isinstance(rest[-1], dg.Metadata)


async def test_empty_binary_frame_closes_the_stream(recognizer_url: str) -> None:
    async with connect(f"{recognizer_url}/v1/listen?{TELEPHONY}") as ws:
        await ws.send(b"\xff" * 800)
        await ws.send(b"")
        messages = await drain(ws)
        assert ws.close_code == 1000
    assert isinstance(messages[-1], dg.Metadata)


async def test_idle_stream_is_closed_with_net_0001(impatient_recognizer_url: str) -> None:
    async with connect(f"{impatient_recognizer_url}/v1/listen?{TELEPHONY}") as ws:
        await ws.send(b"\xff" * 160)
        await drain(ws)
        assert ws.close_code == dg.CLOSE_NET_ERROR
        assert ws.close_reason == dg.REASON_NET_IDLE


@pytest.mark.parametrize(
    "frame",
    ["not json", '{"type": "Dance"}', '{"type": "Finalize", "channel": "x"}'],
)
async def test_garbage_text_frame_is_closed_with_data_0000(recognizer_url: str, frame: str) -> None:
    async with connect(f"{recognizer_url}/v1/listen?{TELEPHONY}") as ws:
        await ws.send(frame)
        await drain(ws)
        assert ws.close_code == dg.CLOSE_DATA_ERROR
        assert ws.close_reason == dg.REASON_DATA


async def test_containerised_audio_on_raw_stream_is_refused(recognizer_url: str) -> None:
    wav = (FIXTURES / "audio" / "clips" / "00.wav").read_bytes()
    async with connect(f"{recognizer_url}/v1/listen?{TELEPHONY}") as ws:
        await ws.send(wav[:4000])
        await drain(ws)
        assert ws.close_code == dg.CLOSE_DATA_ERROR
        assert ws.close_reason == dg.REASON_DATA


async def test_linear16_with_odd_chunks_is_accepted(recognizer_url: str) -> None:
    pcm = b"\x00\x00" * 8000
    async with connect(f"{recognizer_url}/v1/listen?encoding=linear16&sample_rate=16000") as ws:
        await ws.send(pcm[:1001])
        await ws.send(pcm[1001:])
        await ws.send(dg.encode(dg.CloseStream()).decode())
        messages = await drain(ws)
        assert ws.close_code == 1000
    meta = messages[-1]
    assert isinstance(meta, dg.Metadata) and meta.duration == pytest.approx(0.5)


async def test_health_ready_and_metrics(recognizer_url: str) -> None:
    async with httpx.AsyncClient(base_url=http_url(recognizer_url), timeout=10) as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["ready"] is True and body["workers"] == 2
        metrics = (await client.get("/metrics")).text
    assert "recognizer_queue_depth" in metrics
    assert "recognizer_busy_workers" in metrics
    assert "recognizer_skipped_partials" in metrics


def test_wire_messages_are_typed() -> None:
    with pytest.raises(msgspec.ValidationError):
        dg.decode_client('{"type": "Nope"}')
