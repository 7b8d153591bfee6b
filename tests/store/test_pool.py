"""The store's connection pool under a burst of concurrent commands."""

from __future__ import annotations

import asyncio
import uuid

from bridge.store.client import MAX_CONNECTIONS, client_from_url


async def test_regression_a_burst_beyond_the_pool_waits_instead_of_failing(redis_url: str) -> None:
    # redis-py's default pool raised MaxConnectionsError past 100 connections, which the store reads
    # as "Redis is away": 1,000 subscribers joining at once got 503s and 1011s from a healthy Redis.
    client = client_from_url(redis_url)
    key = f"test:pool:{uuid.uuid4().hex}"
    try:
        burst = MAX_CONNECTIONS + 50  # each holds its connection for 0.2 s, so they cannot all have one
        replies = await asyncio.gather(*(client.blpop([key], timeout=0.2) for _ in range(burst)))
        assert replies == [None] * burst
    finally:
        await client.aclose()
