"""The Redis connection of the store: how it is made, and which errors mean "Redis is away".

Every part of the store shares one :class:`StoreBase` (a client, the key names, the retention), the
way redis-py builds its client from command mixins: each module of this package adds the commands
of one concern (calls, finals, batch results), and :class:`bridge.store.Store` puts them together.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from bridge.store.keys import Keys

#: Errors that mean "Redis is unreachable right now" (retrying later may succeed).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    # A cluster moving slots or failing over a master: the same command succeeds a moment later.
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    ConnectionError,
    TimeoutError,
    OSError,
)
#: Every error a store call can raise: Redis unreachable, or a command Redis refused (WRONGTYPE, OOM…).
STORE_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE, redis.exceptions.RedisError)


#: A single Redis server, or a Redis Cluster (every command of the store works on both).
Client = aioredis.Redis | RedisCluster

_TIMEOUTS: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
#: Connections one process opens to a single Redis server (pub/sub has its own); more wait for one.
MAX_CONNECTIONS = 100
#: How long a command waits for a free connection before it counts as "Redis is away".
POOL_WAIT_SECONDS = 5.0


def client_from_url(url: str, *, cluster: bool = False, **overrides: Any) -> Client:
    """A redis.asyncio client that fails fast when Redis is unreachable (callers decide on retries).

    With ``cluster``, ``url`` names any node of a Redis Cluster: redis-py's cluster client discovers
    the others and routes each command to the node that owns its slot.
    """
    if cluster:
        return RedisCluster.from_url(url, **{**_TIMEOUTS, **overrides})
    # redis-py's default pool raises MaxConnectionsError (a ConnectionError, so "Redis is away") the
    # moment a burst needs more than 100 connections: 1,000 dashboards joining at once looked like an
    # outage. A blocking pool makes the burst wait its turn instead, and still fails after the wait.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=MAX_CONNECTIONS, timeout=POOL_WAIT_SECONDS,
        **{**_TIMEOUTS, "health_check_interval": 15, "retry_on_timeout": False, **overrides},
    )  # fmt: skip
    return aioredis.Redis.from_pool(pool)


async def pubsub_of(client: Client, **kwargs: Any) -> PubSub:
    """A pub/sub of ``client`` ready to subscribe: a cluster client learns who owns which slot first
    (its pub/sub picks the node of the first channel's slot; every node hears every PUBLISH)."""
    if isinstance(client, RedisCluster):
        await client.initialize()
    return client.pubsub(**kwargs)


class StoreBase:
    """What every part of the store works with."""

    def __init__(self, client: Client, *, prefix: str, retention_seconds: int) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.retention_seconds = retention_seconds


def text(value: Any) -> str:
    """A Redis reply (bytes) as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def text_dict(raw: dict[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in raw.items()}


def as_mapping(fields: dict[str, str]) -> Mapping[Any, Any]:
    """redis-py's ``mapping=`` is typed over its own key/value unions; a ``dict[str, str]`` is one."""
    return fields


__all__ = [
    "STORE_ERRORS",
    "UNAVAILABLE",
    "Client",
    "StoreBase",
    "as_mapping",
    "client_from_url",
    "pubsub_of",
    "text",
    "text_dict",
]
