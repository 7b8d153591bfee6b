"""Redis storage of the bridge: call records, finals and live events, recording jobs, batch results.

Every Redis command of the project lives in this package, one concern a module, and every key
name in :mod:`bridge.store.keys`:

- :mod:`~bridge.store.calls`: call metadata and the index of active and ended calls;
- :mod:`~bridge.store.finals`: the durable, numbered transcript, and live events (pub/sub);
- :mod:`~bridge.store.search`: the word index kept as finals are written, and phrase search;
- :mod:`~bridge.store.jobs`: the recording jobs queue (stream, consumer group, retries, dead letters);
- :mod:`~bridge.store.results`: the batch pass's transcript and quality figures;
- :mod:`~bridge.store.compliance`: live alerts and compliance reports;
- :mod:`~bridge.store.deletion`: erasing a call, and the tombstone every writer of a call checks;
- :mod:`~bridge.store.streams`: which streams of a call still run (stream handoff, crash recovery);
- :mod:`~bridge.store.writeback`: the write-behind the call path talks to (never waits on Redis);
- :mod:`~bridge.store.redis_embedded`: the redis-server started when no ``REDIS_URL`` is given.

:class:`Store` is all of the first five over one client, the way redis-py's client is built from
command mixins.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bridge.settings import Settings
from bridge.store.calls import CallInfo, CallRecords
from bridge.store.client import STORE_ERRORS, UNAVAILABLE, Client, client_from_url, pubsub_of
from bridge.store.compliance import ComplianceLog
from bridge.store.deletion import Erased
from bridge.store.finals import FinalLog
from bridge.store.jobs import Backlog, JobQueue, RecordingJob
from bridge.store.keys import Keys
from bridge.store.redis_embedded import EmbeddedRedis
from bridge.store.results import BatchResults
from bridge.store.streams import StreamRecords
from bridge.store.writeback import FinalsWriter


class Store(CallRecords, FinalLog, BatchResults, ComplianceLog, StreamRecords):
    """The bridge's Redis store. All methods raise redis errors when Redis is unreachable.

    ``client`` is a single server's client or a Redis Cluster's (``url``: the one it was made from,
    which :meth:`dedicated_client` needs for a cluster).
    """

    def __init__(self, client: Client, *, prefix: str, retention_seconds: int, url: str = "") -> None:
        super().__init__(client, prefix=prefix, retention_seconds=retention_seconds)
        self._url = url
        self._embedded: EmbeddedRedis | None = None
        self._owns_client = False

    @classmethod
    async def open(cls, settings: Settings, *, embedded_dir: str | os.PathLike[str] | None = None) -> Store:
        """Connect to ``settings.redis_url`` (a cluster with ``settings.redis_cluster``), or start an
        embedded redis (owned by the store) if it is empty."""
        embedded: EmbeddedRedis | None = None
        url = settings.redis_url
        if not url:
            embedded = EmbeddedRedis(Path(embedded_dir or settings.redis_dir))
            await asyncio.to_thread(embedded.start)
            url = embedded.url
        client = client_from_url(url, cluster=settings.redis_cluster)
        store = cls(client, prefix=settings.redis_prefix, retention_seconds=settings.retention_seconds, url=url)
        store._embedded = embedded
        store._owns_client = True
        return store

    @property
    def cluster(self) -> bool:
        return isinstance(self.client, RedisCluster)

    @property
    def url(self) -> str:
        """The URL of the Redis in use (the embedded one's when we started it)."""
        if self._embedded is not None:
            return self._embedded.url
        if self._url or isinstance(self.client, RedisCluster):
            return self._url
        kw = self.client.connection_pool.connection_kwargs
        if "path" in kw:
            return f"unix://{kw['path']}?db={kw.get('db', 0)}"
        return f"redis://{kw.get('host', '127.0.0.1')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"

    async def close(self) -> None:
        if self._owns_client:
            await self.client.aclose()
        if self._embedded is not None:
            embedded, self._embedded = self._embedded, None
            await asyncio.to_thread(embedded.stop)

    async def ping(self) -> bool:
        """True when Redis answers (for ``/readyz``)."""
        try:
            return bool(await self.client.ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    def dedicated_client(self, name: str) -> Client:
        """A client of its own on the same server (or cluster) that surfaces failures at once (no
        silent retry), for a long-lived connection such as the fan-out hub's pub/sub. The caller
        closes it."""
        no_retry = Retry(NoBackoff(), 0)
        client_name = f"{self.keys.prefix}:{name}"
        if isinstance(self.client, RedisCluster):
            if not self._url:
                raise RuntimeError("a cluster store needs the URL it was opened with for a dedicated client")
            return client_from_url(self._url, cluster=True, retry=no_retry, client_name=client_name)
        pool = self.client.connection_pool
        kwargs = {**pool.connection_kwargs, "retry": no_retry, "client_name": client_name}
        return aioredis.Redis(connection_pool=aioredis.ConnectionPool(connection_class=pool.connection_class, **kwargs))

    async def enqueue_recording(self, job: RecordingJob) -> str:
        """Queue a call's recording for the batch pass; returns the job's entry id ("" when the call
        was erased: nothing is queued)."""
        if await self.call_deleted(job.call_sid):
            return ""
        return await self.jobs.enqueue(job)


__all__ = [
    "STORE_ERRORS",
    "UNAVAILABLE",
    "Backlog",
    "CallInfo",
    "Client",
    "EmbeddedRedis",
    "Erased",
    "FinalsWriter",
    "JobQueue",
    "Keys",
    "RecordingJob",
    "Store",
    "client_from_url",
    "pubsub_of",
]
