"""Recording jobs: what the bridge hands to the batch worker after a call, and the queue they wait in.

A job travels as a Redis Stream entry of flat string fields so that a consumer in any language can
read it without this package (lists are comma-separated, numbers are decimal strings).

:class:`JobQueue` owns every stream command of that queue, so the worker only orchestrates.
Delivery is at-least-once through the consumer group ``Keys.recordings_group``:

* a job is read with XREADGROUP and acked only once its result is stored;
* while a job is in hand its entry is re-claimed periodically (:meth:`JobQueue.heartbeat`), so only
  the jobs of a worker that died go idle, and those are taken over with XAUTOCLAIM;
* a failed job stays pending and waits in ``Keys.recordings_retry`` for its retry; after too many
  failures it moves to ``Keys.recordings_dead`` with the reason.

Every key of the queue shares the hash tag ``{jobs}``, so an ack (XACK and forgetting the job's
failures) and a move to the dead letters are each one transaction, also on a Redis Cluster.

:meth:`JobQueue.backlog` measures what is not done yet from the stream and its group alone (XINFO
GROUPS, XPENDING, XRANGE), so any worker can export it and it survives worker restarts.

The webhook outbox (:mod:`bridge.webhooks`) is a :class:`JobQueue` over its own keys
(``Keys.webhook_queue``, hash tag ``{webhooks}``), with the same guarantees.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec
import redis.exceptions

from bridge.store.client import Client, text
from bridge.store.keys import Keys, QueueKeys

JobSource = Literal["stream", "twilio"]


class RecordingJob(msgspec.Struct, kw_only=True, frozen=True):
    call_sid: str
    #: Local path of the recording (source ``stream``) or where it is to be downloaded to.
    path: str
    format: str = "wav"
    encoding: str = "mulaw"
    sample_rate: int = 8000
    channels: int = 1
    #: Track of each channel, in channel order (e.g. ``["inbound", "outbound"]``).
    tracks: list[str] = msgspec.field(default_factory=list)
    duration: float = 0.0
    created_at: float = msgspec.field(default_factory=time.time)
    #: ``stream``: written by the bridge from the media stream; ``twilio``: a Twilio recording.
    source: JobSource = "stream"
    recording_url: str = ""

    def to_fields(self) -> dict[str, str]:
        """The flat string fields of the stream entry."""
        return {
            "call_sid": self.call_sid,
            "path": self.path,
            "format": self.format,
            "encoding": self.encoding,
            "sample_rate": str(self.sample_rate),
            "channels": str(self.channels),
            "tracks": ",".join(self.tracks),
            "duration": repr(float(self.duration)),
            "created_at": repr(float(self.created_at)),
            "source": self.source,
            "recording_url": self.recording_url,
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str] | dict[bytes, bytes]) -> RecordingJob:
        """Parse a stream entry; raises ``ValueError``/``msgspec.ValidationError`` on a bad one."""
        f = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in fields.items()
        }
        tracks = [t for t in f.get("tracks", "").split(",") if t]
        return msgspec.convert(
            {
                "call_sid": f["call_sid"],
                "path": f.get("path", ""),
                "format": f.get("format", "wav"),
                "encoding": f.get("encoding", "mulaw"),
                "sample_rate": int(f.get("sample_rate", "8000")),
                "channels": int(f.get("channels", "1")),
                "tracks": tracks,
                "duration": float(f.get("duration", "0")),
                "created_at": float(f.get("created_at", "0")),
                "source": f.get("source", "stream"),
                "recording_url": f.get("recording_url", ""),
            },
            cls,
        )


Entry = tuple[str, dict[str, str]]

#: Counting undelivered entries one by one (when Redis cannot tell the group's lag) stops here.
_LAG_SCAN_LIMIT = 10_000


class Backlog(msgspec.Struct, frozen=True, kw_only=True):
    """The recording jobs not done yet (the worker exports it as gauges)."""

    #: Entries no worker has read yet.
    queued: int
    #: Entries read and not acked: in a worker's hands, or failed and waiting for their retry.
    pending: int
    #: Seconds since the oldest of them was queued (0 when there is none).
    oldest_seconds: float
    #: Jobs in the dead letters (they wait for a human).
    dead: int


def entry_time(entry_id: str) -> float:
    """Unix time an entry was added (its id's milliseconds part)."""
    return int(entry_id.partition("-")[0]) / 1000


def _entries(raw: Any) -> list[Entry]:
    """Stream entries as redis-py returns them -> ``[(id, fields)]`` (fields empty for a deleted entry)."""
    return [(text(cid), {text(a): text(b) for a, b in (fields or {}).items()}) for cid, fields in raw or []]


class JobQueue:
    """The recording jobs stream, its consumer group, retries and dead letters (or, with ``queue``,
    another stream with the same guarantees: the webhook outbox)."""

    def __init__(self, client: Client, keys: Keys, *, maxlen: int = 100_000, queue: QueueKeys | None = None) -> None:
        self.client = client
        self.keys = keys
        self.q = queue if queue is not None else keys.recording_queue
        self.maxlen = maxlen
        self._group_ready = False
        self._claim_cursor = "0-0"

    async def enqueue(self, job: RecordingJob) -> str:
        """Append a job; returns the entry id."""
        return await self.add(job.to_fields())

    async def add(self, fields: dict[str, str]) -> str:
        """Append an entry of flat string fields; returns its id."""
        entry = await self.client.xadd(self.q.stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
        return text(entry)

    async def add_all(self, entries: list[dict[str, str]]) -> None:
        """Append several entries in one transaction (all of them or none)."""
        async with self.client.pipeline(transaction=True) as tx:
            for fields in entries:
                tx.xadd(self.q.stream, fields, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            await tx.execute()

    async def purge(self, call_sid: str, *, chunk: int = 1000) -> int:
        """Remove every entry about ``call_sid`` (field ``call_sid``), queued, pending or dead; returns
        how many. Walks both streams in chunks: an erasure, not a hot path."""
        q, c = self.q, self.client
        removed = 0
        for stream in (q.stream, q.dead):
            start = "-"
            while True:
                batch = _entries(await c.xrange(stream, min=start, count=chunk))
                ids = [i for i, fields in batch if fields.get("call_sid") == call_sid]
                if ids:
                    async with c.pipeline(transaction=True) as tx:
                        if stream == q.stream:
                            for entry_id in ids:
                                self.ack_in(tx, entry_id)
                        tx.xdel(stream, *ids)
                        await tx.execute()
                    removed += len(ids)
                if len(batch) < chunk:
                    break
                start = "(" + batch[-1][0]
        return removed

    async def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.client.xgroup_create(self.q.stream, self.q.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def next(self, consumer: str, *, block_ms: int, claim_idle_ms: int) -> tuple[Entry, bool] | None:
        """The next job for ``consumer``: a due retry, then a dead worker's job, then a new one.

        Returns ``((entry_id, fields), claimed)`` (``claimed``: taken over from another consumer), or
        ``None`` when nothing came within ``block_ms``.
        """
        await self.ensure_group()
        q, c = self.q, self.client
        now = time.time()
        for raw_id in await c.zrangebyscore(q.retry, "-inf", now, start=0, num=1):
            entry_id = text(raw_id)
            if await c.zrem(q.retry, entry_id):
                claimed: Any = await c.xclaim(q.stream, q.group, consumer, 0, [entry_id])
                for cid, fields in _entries(claimed):
                    if fields:
                        return (cid, fields), False
                await c.hdel(q.attempts, entry_id)  # the entry is gone (trimmed)
        result: Any = await c.xautoclaim(
            q.stream, q.group, consumer, claim_idle_ms, start_id=self._claim_cursor, count=1
        )
        self._claim_cursor = text(result[0])
        for entry_id, fields in _entries(result[1]):
            score = await c.zscore(q.retry, entry_id)
            if score is not None and float(score) > now:
                continue  # failed before and waiting out its backoff: not abandoned
            if fields:
                return (entry_id, fields), True
        read: Any = await c.xreadgroup(q.group, consumer, {q.stream: ">"}, count=1, block=block_ms)
        for _stream, entries in read or []:
            for entry in _entries(entries):
                return entry, False
        return None

    def ack_in(self, tx: Any, entry_id: str) -> None:
        """Queue the commands that settle ``entry_id`` on a pipeline (ack, forget attempts and retry)."""
        q = self.q
        tx.xack(q.stream, q.group, entry_id)
        tx.hdel(q.attempts, entry_id)
        tx.zrem(q.retry, entry_id)

    async def ack(self, entry_id: str) -> None:
        async with self.client.pipeline(transaction=True) as tx:
            self.ack_in(tx, entry_id)
            await tx.execute()

    async def discard(self, entry_id: str) -> None:
        """Settle ``entry_id`` and delete it from the stream (an erased call's entry leaves no trace)."""
        async with self.client.pipeline(transaction=True) as tx:
            self.ack_in(tx, entry_id)
            tx.xdel(self.q.stream, entry_id)
            await tx.execute()

    async def trim_dead(self, before: float) -> int:
        """Delete the dead letters added before unix time ``before`` (past the retention); how many."""
        return int(await self.client.xtrim(self.q.dead, minid=f"{int(before * 1000)}-0", approximate=False))

    async def heartbeat(self, entry_id: str, consumer: str) -> None:
        """Reset the entry's idle time so nobody takes it over while we work on it."""
        await self.client.xclaim(self.q.stream, self.q.group, consumer, 0, [entry_id],
                                 justid=True)  # fmt: skip

    async def release(self, entry_id: str, consumer: str, *, idle_ms: int) -> None:
        """Give a job back: it stays pending but looks idle, so another worker claims it at once."""
        await self.client.xclaim(self.q.stream, self.q.group, consumer, 0, [entry_id],
                                 idle=idle_ms, justid=True)  # fmt: skip

    async def failed(self, entry_id: str) -> int:
        """Count one more failure of ``entry_id``; returns the failures so far."""
        return int(await self.client.hincrby(self.q.attempts, entry_id, 1))

    async def retry_at(self, entry_id: str, due: float) -> None:
        """Hand ``entry_id`` out again (to any consumer) at unix time ``due``."""
        await self.client.zadd(self.q.retry, {entry_id: due})

    async def dead_letter(self, entry_id: str, fields: dict[str, str], reason: str, *, attempts: int,
                          consumer: str) -> None:  # fmt: skip
        """Move a job that cannot succeed to the dead letters, with why."""
        doc = {**fields, "job_id": entry_id, "reason": reason[:2000], "attempts": str(attempts),
               "failed_at": repr(time.time()), "consumer": consumer}  # fmt: skip
        async with self.client.pipeline(transaction=True) as tx:
            tx.xadd(self.q.dead, doc)  # type: ignore[arg-type]
            self.ack_in(tx, entry_id)
            await tx.execute()

    async def backlog(self, *, now: float | None = None) -> Backlog:
        """How many jobs wait, and for how long the oldest has (see :class:`Backlog`)."""
        q, c = self.q, self.client
        now = time.time() if now is None else now
        dead = int(await c.xlen(q.dead))
        try:
            groups: Any = await c.xinfo_groups(q.stream)
        except redis.exceptions.ResponseError as exc:
            if "no such key" not in str(exc):
                raise
            return Backlog(queued=0, pending=0, oldest_seconds=0.0, dead=dead)
        group = next((g for g in groups if text(g["name"]) == q.group), None)
        oldest: list[str] = []
        if group is None:  # no worker has started yet: everything waits
            queued = int(await c.xlen(q.stream))
            pending = 0
            first = _entries(await c.xrange(q.stream, count=1))
        else:
            pending = int(group["pending"])
            after = "(" + text(group["last-delivered-id"])
            first = _entries(await c.xrange(q.stream, min=after, count=1))
            lag = group.get("lag")
            if lag is not None:
                queued = int(lag)
            else:  # entries were deleted inside the unread range: count them (bounded)
                queued = len(_entries(await c.xrange(q.stream, min=after, count=_LAG_SCAN_LIMIT)))
            if pending:
                summary: Any = await c.xpending(q.stream, q.group)
                if summary.get("min") is not None:
                    oldest.append(text(summary["min"]))
        oldest += [entry_id for entry_id, _ in first]
        age = max(0.0, now - min(entry_time(i) for i in oldest)) if oldest and queued + pending else 0.0
        return Backlog(queued=queued, pending=pending, oldest_seconds=age, dead=dead)

    async def dead_letters(self, count: int = 100) -> list[Entry]:
        return _entries(await self.client.xrange(self.q.dead, count=count))


__all__ = ["Backlog", "Entry", "JobQueue", "JobSource", "RecordingJob", "entry_time"]
