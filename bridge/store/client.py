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

from bridge.store.keys import Keys

#: Errors that mean "Redis is unreachable right now" (retrying later may succeed).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    ConnectionError,
    TimeoutError,
    OSError,
)


def client_from_url(url: str) -> aioredis.Redis:
    """A redis.asyncio client that fails fast when Redis is unreachable (callers decide on retries)."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=15,
        retry_on_timeout=False,
    )


class StoreBase:
    """What every part of the store works with."""

    def __init__(self, client: aioredis.Redis, *, prefix: str, retention_seconds: int) -> None:
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


__all__ = ["UNAVAILABLE", "StoreBase", "as_mapping", "client_from_url", "text", "text_dict"]
