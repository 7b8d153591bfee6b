"""Every store test runs twice: on one Redis server, and on a real three-master Redis Cluster, where a
transaction or script touching two slots is an error (CROSSSLOT)."""

from __future__ import annotations

import pytest

from bridge.store import Store


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest, store: Store) -> Store:
    if request.param == "cluster":
        cluster_store: Store = request.getfixturevalue("cluster_store")
        return cluster_store
    return store
