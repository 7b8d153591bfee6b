"""Worker fixtures: a Redis (or Redis Cluster) client under a unique prefix, engines (a controllable fake,
real tiny.en)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from bridge.batch.whisper import WhisperBatchEngine
from bridge.events import Word
from bridge.store import Client, client_from_url
from bridge.store.keys import Keys
from bridge.transcripts import Recording, Utterance, tracks_for


class FakeEngine:
    """Labels one utterance per channel; can be made to hang (a job in hand) until released."""

    name = "fake"
    model = "fake-1"

    def __init__(self, *, hang: bool = False) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not hang:
            self.release.set()

    async def transcribe(self, recording: Recording, tracks: Sequence[str]) -> list[Utterance]:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        out = []
        for ch, track in enumerate(tracks_for(recording.channels, tracks)):
            words = [Word(word="hello", start=1.0 + ch, end=1.4 + ch), Word(word="there", start=1.4 + ch, end=1.9 + ch)]
            out.append(Utterance(id=f"{track}-{ch}", track=track, channel=ch, speaker=track, start=1.0 + ch,
                                 end=1.9 + ch, text="hello there", words=words))  # fmt: skip
        return out


@pytest.fixture(params=["redis", "cluster"])
async def redis(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """A client of the session's Redis, or of the session's Redis Cluster: every worker test runs on both."""
    cluster = request.param == "cluster"
    client = client_from_url(request.getfixturevalue("redis_cluster_url" if cluster else "redis_url"), cluster=cluster)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def keys(redis: Client, redis_prefix: str) -> AsyncIterator[Keys]:
    k = Keys(redis_prefix)
    try:
        yield k
    finally:
        found = [key async for key in redis.scan_iter(match=k.pattern(), count=500)]
        if found:
            await redis.delete(*found)


@pytest.fixture(scope="session")
def tiny_engine() -> WhisperBatchEngine:
    return WhisperBatchEngine("tiny.en", beam_size=5, cpu_threads=2)
