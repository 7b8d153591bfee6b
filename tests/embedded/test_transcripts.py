"""Real words out of the embedded recognizer (tiny.en) for telephony fixtures."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from bridge.audio import read_wav
from bridge.recognizers.deepgram import wire as dg
from bridge.wer import wer
from tests.support import FIXTURES

pytestmark = pytest.mark.timeout(120)

QUERY = (
    "model=nova-3&encoding=mulaw&sample_rate=8000&channels=1&interim_results=true&endpointing=300"
    "&utterance_end_ms=1000&vad_events=true&punctuate=true&smart_format=true&language=en-US"
)


async def transcribe(url: str, audio: bytes, *, pace: float = 0.01, query: str = QUERY) -> list[dg.ServerMessage]:
    """Stream ~10x faster than real time, close, and collect every message."""
    async with connect(f"{url}/v1/listen?{query}") as ws:

        async def reader(conn: ClientConnection) -> list[dg.ServerMessage]:
            out: list[dg.ServerMessage] = []
            with contextlib.suppress(websockets.ConnectionClosedError):
                async for raw in conn:
                    out.append(dg.decode_server(raw))
            return out

        task = asyncio.create_task(reader(ws))
        for i in range(0, len(audio), 800):
            await ws.send(audio[i : i + 800])
            await asyncio.sleep(pace)
        await ws.send(dg.encode(dg.CloseStream()).decode())
        messages = await task
        assert ws.close_code == 1000
    return messages


def finals_text(messages: list[dg.ServerMessage]) -> str:
    return " ".join(
        m.channel.alternatives[0].transcript
        for m in messages
        if isinstance(m, dg.Results) and m.is_final and m.channel.alternatives[0].transcript
    )


@pytest.mark.parametrize("index", [0, 1, 3, 4])
async def test_clip_final_matches_reference(recognizer_url: str, clips: list[Any], index: int) -> None:
    clip = clips[index]
    wav = read_wav(FIXTURES / "audio" / str(clip["file"]))
    messages = await transcribe(recognizer_url, wav.channel_bytes(0))
    text = finals_text(messages)
    assert wer(str(clip["text"]), text).rate <= 0.35, text
    assert isinstance(messages[-1], dg.Metadata)
    assert messages[-1].duration == pytest.approx(wav.duration, abs=0.01)
    words = [w for m in messages if isinstance(m, dg.Results) and m.is_final for w in m.channel.alternatives[0].words]
    assert words
    for w in words:  # seconds from stream start, inside the audio
        assert 0.0 <= w.start <= w.end <= wav.duration + 0.05
        assert w.word == w.word.lower() and w.punctuated_word
    assert [w.start for w in words] == sorted(w.start for w in words)


async def test_call_track_gives_partials_finals_and_utterance_events(recognizer_url: str) -> None:
    wav = read_wav(FIXTURES / "calls" / "short_call.wav")
    messages = await transcribe(recognizer_url, wav.channel_bytes(1), pace=0.02)  # outbound: the agent
    kinds = [type(m).__name__ for m in messages]
    assert kinds[-1] == "Metadata"
    assert "SpeechStarted" in kinds and "UtteranceEnd" in kinds
    results = [m for m in messages if isinstance(m, dg.Results)]
    finals = [r for r in results if r.is_final]
    assert any(r.speech_final for r in finals)
    assert any(not r.is_final for r in results), "interim results were requested"
    assert wer("Customer support, how can I help? I will send you a reset link by email.",
               finals_text(messages)).rate <= 0.5
    # Results come in stream order: each final starts no earlier than the previous one.
    starts = [r.start for r in finals]
    assert starts == sorted(starts)
    ends = [m for m in messages if isinstance(m, dg.UtteranceEnd)]
    assert all(0.0 < u.last_word_end <= wav.duration for u in ends)
    for r in results:
        assert r.channel_index == [0, 1]
        assert r.start + r.duration <= wav.duration + 0.05
