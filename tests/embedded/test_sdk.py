"""The official deepgram-sdk 7.x client, pointed at the embedded recognizer, gets typed messages."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from deepgram import AsyncDeepgramClient
from deepgram.environment import DeepgramClientEnvironment

from bridge.audio import read_wav
from tests.support import FIXTURES

pytestmark = pytest.mark.timeout(120)



async def test_official_sdk_streams_a_call_track(recognizer_url: str) -> None:
    from deepgram.listen.v1.types import ListenV1Metadata, ListenV1Results, ListenV1UtteranceEnd

    http = recognizer_url.replace("ws://", "http://")
    env = DeepgramClientEnvironment(base=http, production=recognizer_url, agent=recognizer_url, agent_rest=http)
    client = AsyncDeepgramClient(api_key="any-key", environment=env)
    audio = read_wav(FIXTURES / "calls" / "short_call.wav").channel_bytes(0)  # inbound: the caller
    received: list[Any] = []
    async with client.listen.v1.connect(
        model="nova-3",
        encoding="mulaw",
        sample_rate=8000,
        channels=1,
        interim_results=True,
        endpointing=300,
        utterance_end_ms=1000,
        vad_events=True,
        smart_format=True,
        punctuate=True,
        language="en-US",
    ) as conn:

        async def reader() -> None:
            async for message in conn:
                received.append(message)

        task = asyncio.create_task(reader())
        for i in range(0, len(audio), 1600):
            await conn.send_media(audio[i : i + 1600])
            await asyncio.sleep(0.01)
        await conn.send_keep_alive()
        await conn.send_close_stream()
        await asyncio.wait_for(task, 60)

    results = [m for m in received if isinstance(m, ListenV1Results)]
    finals = " ".join(r.channel.alternatives[0].transcript for r in results if r.is_final).lower()
    assert "password" in finals
    assert any(isinstance(m, ListenV1UtteranceEnd) for m in received)
    assert isinstance(received[-1], ListenV1Metadata)
