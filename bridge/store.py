"""Redis storage: call metadata and the call index, finals, live events, recording jobs.

Finals are the durable transcript. Each is stored once per ``Final.id`` and gets a per-call ``seq``
(1, 2, 3… in insertion order); storing it and publishing it on the call's channel happen in one Lua
script, so a subscriber that subscribes first and then reads the snapshot misses nothing and
de-duplicates by ``seq``. Everything of a call gets the retention TTL when the call ends.

:meth:`Store.call_started` and :meth:`Store.call_ended` publish the ``call_started``/``call_ended``
live events themselves (on the call's channel and on the all-calls channel); callers do not publish
them again.

The call path must never wait on Redis: it talks to a :class:`FinalsWriter`, whose background task
writes in order, retries while Redis is unreachable, and bounds its memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aioredis
import redis.exceptions

from bridge import events
from bridge.jobs import RecordingJob
from bridge.keys import Keys
from bridge.redis_embedded import EmbeddedRedis
from bridge.settings import Settings

logger = logging.getLogger(__name__)

#: Errors that mean "Redis is unreachable right now" (retrying later may succeed).
UNAVAILABLE: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    ConnectionError,
    TimeoutError,
    OSError,
)

_TRACK_ORDER = {"inbound": 0, "outbound": 1}

# KEYS: final_ids, finals, call, channel. ARGV: final id, final JSON without seq.
# Returns the new seq, or nil when this id is already stored.
_ADD_FINAL = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return false
end
local seq = redis.call('LLEN', KEYS[2]) + 1
local doc = string.sub(ARGV[2], 1, -2) .. ',"seq":' .. seq .. '}'
redis.call('RPUSH', KEYS[2], doc)
redis.call('HSET', KEYS[1], ARGV[1], seq)
redis.call('HSET', KEYS[3], 'finals', seq)
local ttl = redis.call('TTL', KEYS[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('PUBLISH', KEYS[4], doc)
return seq
"""

# Hash fields of P:call:{sid} with a meaning of their own; everything else lands in CallInfo.extra.
_F_STATUS = "status"
_F_STARTED = "started_at"
_F_ENDED = "ended_at"
_F_REASON = "end_reason"
_F_ACCOUNT = "account_sid"
_F_FROM = "from"
_F_TO = "to"
_F_FINALS = "finals"
_TRACK_PREFIX = "track."
_RECOGNIZER_PREFIX = "recognizer."
_CUSTOM_PREFIX = "custom."


class CallInfo(msgspec.Struct, kw_only=True, omit_defaults=False):
    """What the store knows about one call (the ``GET /calls/{sid}`` document)."""

    call_sid: str
    #: ``active`` or ``ended`` (empty when only a status callback has been seen so far).
    status: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    end_reason: str = ""
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    tracks: list[str] = msgspec.field(default_factory=list)
    stream_sids: list[str] = msgspec.field(default_factory=list)
    #: Recognizer state per track (``connecting``, ``connected``, ``reconnecting``…).
    recognizers: dict[str, str] = msgspec.field(default_factory=dict)
    finals: int = 0
    #: Twilio ``<Parameter>`` values of the stream.
    custom: dict[str, str] = msgspec.field(default_factory=dict)
    #: Every other field set with :meth:`Store.update_call` (status callbacks and the like).
    extra: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status == "active"


def _float(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def _call_info(call_sid: str, fields: dict[str, str], stream_sids: list[str]) -> CallInfo:
    info = CallInfo(
        call_sid=call_sid,
        status=fields.get(_F_STATUS, ""),
        started_at=_float(fields.get(_F_STARTED)),
        ended_at=_float(fields.get(_F_ENDED)),
        end_reason=fields.get(_F_REASON, ""),
        account_sid=fields.get(_F_ACCOUNT, ""),
        from_number=fields.get(_F_FROM, ""),
        to_number=fields.get(_F_TO, ""),
        finals=int(_float(fields.get(_F_FINALS))),
        stream_sids=stream_sids,
    )
    known = {_F_STATUS, _F_STARTED, _F_ENDED, _F_REASON, _F_ACCOUNT, _F_FROM, _F_TO, _F_FINALS}
    for name, value in sorted(fields.items()):
        if name in known:
            continue
        if name.startswith(_TRACK_PREFIX):
            info.tracks.append(name[len(_TRACK_PREFIX) :])
        elif name.startswith(_RECOGNIZER_PREFIX):
            info.recognizers[name[len(_RECOGNIZER_PREFIX) :]] = value
        elif name.startswith(_CUSTOM_PREFIX):
            info.custom[name[len(_CUSTOM_PREFIX) :]] = value
        else:
            info.extra[name] = value
    info.tracks.sort(key=lambda t: (_TRACK_ORDER.get(t, 9), t))
    return info


def _audio_order(final: events.Final) -> tuple[float, int, float, str]:
    return (final.start, _TRACK_ORDER.get(final.track, 9), final.end, final.id)


class Store:
    """The bridge's Redis store. All methods raise redis errors when Redis is unreachable."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        retention_seconds: int,
        jobs_maxlen: int = 100_000,
    ) -> None:
        self.client = client
        self.keys = Keys(prefix)
        self.retention_seconds = retention_seconds
        self.jobs_maxlen = jobs_maxlen
        self._add_final = client.register_script(_ADD_FINAL)
        self._embedded: EmbeddedRedis | None = None
        self._owns_client = False

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls, settings: Settings, *, embedded_dir: str | os.PathLike[str] = "var/redis"
    ) -> Store:
        """Connect to ``settings.redis_url``, or start an embedded redis (owned by the store) if empty."""
        embedded: EmbeddedRedis | None = None
        url = settings.redis_url
        if not url:
            embedded = EmbeddedRedis(Path(embedded_dir))
            await asyncio.to_thread(embedded.start)
            url = embedded.url
        client = client_from_url(url)
        store = cls(client, prefix=settings.redis_prefix, retention_seconds=settings.retention_seconds)
        store._embedded = embedded
        store._owns_client = True
        return store

    @property
    def url(self) -> str:
        """The URL of the Redis in use (the embedded one's when we started it)."""
        if self._embedded is not None:
            return self._embedded.url
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

    # -- calls -----------------------------------------------------------------------------

    async def call_started(
        self,
        call_sid: str,
        *,
        stream_sid: str,
        tracks: list[str],
        started_at: float,
        account_sid: str = "",
        from_number: str = "",
        to_number: str = "",
        custom: dict[str, str] | None = None,
    ) -> None:
        """Record a call (or one more stream of it). An active call keeps its start time and finals."""
        k = self.keys
        key = k.call(call_sid)
        fields: dict[str, str] = {_F_STATUS: "active"}
        fields.update({_TRACK_PREFIX + t: "1" for t in tracks})
        if account_sid:
            fields[_F_ACCOUNT] = account_sid
        if from_number:
            fields[_F_FROM] = from_number
        if to_number:
            fields[_F_TO] = to_number
        for name, value in (custom or {}).items():
            fields[_CUSTOM_PREFIX + name] = value
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, _F_STARTED, repr(float(started_at)))
            pipe.hset(key, mapping=_mapping(fields))
            pipe.hdel(key, _F_ENDED, _F_REASON)
            if stream_sid:
                pipe.zadd(k.streams(call_sid), {stream_sid: started_at}, nx=True)
            for name in k.call_keys(call_sid):
                pipe.persist(name)
            pipe.zrem(k.recent_calls, call_sid)
            pipe.zadd(k.active_calls, {call_sid: started_at}, nx=True)
            pipe.hget(key, _F_STARTED)
            pipe.hget(key, _F_FINALS)
            res = await pipe.execute()
        first_start = _float(res[-2]) or started_at
        event = events.CallStarted(
            call_sid=call_sid,
            seq=int(_float(res[-1])),
            tracks=[t for t in tracks if t in _TRACK_ORDER],  # type: ignore[misc]
            stream_sid=stream_sid,
            started_at=first_start,
            from_number=from_number,
            to_number=to_number,
        )
        await self._publish_call_event(event)

    async def update_call(self, call_sid: str, fields: dict[str, str]) -> None:
        """Set metadata fields (status callbacks, ``recognizer.<track>`` states…); creates the record."""
        if fields:
            await self.client.hset(self.keys.call(call_sid), mapping=_mapping(fields))

    async def set_recognizer_state(self, call_sid: str, track: str, state: str) -> None:
        await self.update_call(call_sid, {_RECOGNIZER_PREFIX + track: state})

    async def call_ended(self, call_sid: str, *, ended_at: float, reason: str = "") -> None:
        """Move the call to the recent index, start its retention clock and tell subscribers."""
        k = self.keys
        ttl = max(1, int(self.retention_seconds))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(
                k.call(call_sid),
                mapping={_F_STATUS: "ended", _F_ENDED: repr(float(ended_at)), _F_REASON: reason},
            )
            pipe.zrem(k.active_calls, call_sid)
            pipe.zadd(k.recent_calls, {call_sid: ended_at})
            pipe.zremrangebyscore(k.recent_calls, "-inf", f"({time.time() - ttl}")
            for name in k.call_keys(call_sid):
                pipe.expire(name, ttl)
            pipe.hmget(k.call(call_sid), [_F_STARTED, _F_FINALS])
            res = await pipe.execute()
        started, finals = res[-1]
        started_at = _float(started)
        event = events.CallEnded(
            call_sid=call_sid,
            seq=int(_float(finals)),
            ended_at=ended_at,
            duration=max(0.0, ended_at - started_at) if started_at else 0.0,
            reason=reason,
        )
        await self._publish_call_event(event)

    async def _publish_call_event(self, event: events.CallStarted | events.CallEnded) -> None:
        data = events.encode(event)
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.publish(self.keys.channel(event.call_sid), data)
            pipe.publish(self.keys.calls_channel, data)
            await pipe.execute()

    async def get_call(self, call_sid: str) -> CallInfo | None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.call(call_sid))
            pipe.zrange(self.keys.streams(call_sid), 0, -1)
            raw, sids = await pipe.execute()
        if not raw:
            return None
        return _call_info(call_sid, _str_dict(raw), [_str(s) for s in sids])

    async def list_calls(self, *, active: bool | None = None, limit: int = 100) -> list[CallInfo]:
        """Calls, newest first: active ones (by start), then ended ones (by end)."""
        limit = max(0, limit)
        sids: list[str] = []
        if active is not False:
            sids += [_str(s) for s in await self.client.zrevrange(self.keys.active_calls, 0, limit - 1)]
        if active is not True and len(sids) < limit:
            recent = await self.client.zrevrange(self.keys.recent_calls, 0, limit - len(sids) - 1)
            sids += [_str(s) for s in recent]
        calls = []
        for sid in sids[:limit]:
            info = await self.get_call(sid)
            if info is not None:
                calls.append(info)
        return calls

    # -- finals ----------------------------------------------------------------------------

    async def add_final(self, final: events.Final) -> int | None:
        """Store a final once per id, publish it, and return its seq (``None`` if already stored)."""
        k = self.keys
        doc = events.encode(msgspec.structs.replace(final, seq=0))
        result = await self._add_final(
            keys=[k.final_ids(final.call_sid), k.finals(final.call_sid), k.call(final.call_sid),
                  k.channel(final.call_sid)],
            args=[final.id, doc],
        )  # fmt: skip
        return None if result is None else int(result)

    async def finals(self, call_sid: str, *, after_seq: int = 0) -> list[events.Final]:
        """The call's finals with ``seq > after_seq``, in seq order."""
        raw = await self.client.lrange(self.keys.finals(call_sid), max(0, after_seq), -1)
        return [events.decode_final(doc) for doc in raw]

    async def transcript(self, call_sid: str) -> list[events.Final]:
        """The call's finals in audio order (start time, then caller before agent)."""
        return sorted(await self.finals(call_sid), key=_audio_order)

    # -- live events -----------------------------------------------------------------------

    async def publish(self, event: events.LiveEvent) -> None:
        """Publish an ephemeral live event on its call's channel (finals go through :meth:`add_final`)."""
        await self.client.publish(self.keys.channel(event.call_sid), events.encode(event))

    @contextlib.asynccontextmanager
    async def subscribe(self, call_sid: str) -> AsyncIterator[AsyncIterator[events.LiveEvent]]:
        """A private pub/sub subscription to one call (tools, tests). Servers use ``fanout.Hub``.

        Subscribed when the context is entered; the iterator yields live events until the context exits.
        """
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.channel(call_sid))

        async def iterate() -> AsyncIterator[events.LiveEvent]:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    yield events.decode(message["data"])
                except (msgspec.DecodeError, msgspec.ValidationError):
                    logger.warning("undecodable live event", extra={"call_sid": call_sid})

        try:
            yield iterate()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    # -- recording jobs --------------------------------------------------------------------

    async def enqueue_recording(self, job: RecordingJob) -> str:
        """Append a recording job to the jobs stream; returns the entry id."""
        entry = await self.client.xadd(
            self.keys.recordings,
            job.to_fields(),  # type: ignore[arg-type]
            maxlen=self.jobs_maxlen,
            approximate=True,
        )
        return _str(entry)


def client_from_url(url: str) -> aioredis.Redis:
    """A redis.asyncio client that fails fast when Redis is unreachable (callers decide on retries)."""
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=15,
        retry_on_timeout=False,
    )


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _mapping(fields: dict[str, str]) -> Mapping[Any, Any]:
    return fields


def _str_dict(raw: dict[Any, Any]) -> dict[str, str]:
    return {_str(k): _str(v) for k, v in raw.items()}


# -- write-behind --------------------------------------------------------------------------------


class _Op(msgspec.Struct):
    run: Callable[[], Awaitable[object]]
    what: str
    call_sid: str
    ephemeral: bool


class FinalsWriter:
    """Write-behind between the call path and Redis: submitting never blocks.

    One background task runs the submitted writes in order, each once, retrying with exponential
    backoff while Redis is unreachable. Ephemeral events (partials) are dropped rather than retried.
    At most ``max_pending`` writes wait; past that, new ones are dropped, counted in :attr:`dropped`,
    and logged. :meth:`flush` waits until everything submitted so far is written.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_pending: int = 10_000,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
    ) -> None:
        self.store = store
        self.max_pending = max_pending
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        #: Writes dropped because the bound was reached (finals included).
        self.dropped = 0
        #: Ephemeral events dropped because Redis was unreachable.
        self.dropped_ephemeral = 0
        #: Writes that failed with a non-retryable error (logged, skipped).
        self.failed = 0
        self.written = 0
        self._queue: collections.deque[_Op] = collections.deque()
        self._submitted = 0
        self._done = 0
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._redis_down = False

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def redis_down(self) -> bool:
        return self._redis_down

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="finals-writer")

    async def aclose(self, timeout: float = 5.0) -> None:
        """Flush (bounded by ``timeout``), then stop the background task."""
        await self.flush(timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue:
            logger.error("finals writer closed with %d writes not done", len(self._queue))

    # -- submit (never blocks) ---

    def submit(self, final: events.Final) -> None:
        """Store (and publish) a final, eventually."""
        self._enqueue(_Op(lambda: self.store.add_final(final), "final", final.call_sid, False))

    def publish(self, event: events.LiveEvent) -> None:
        """Publish a live event; finals go to :meth:`submit`, partials are dropped while Redis is down."""
        if isinstance(event, events.Final):
            self.submit(event)
            return
        ephemeral = isinstance(event, events.Partial)
        if ephemeral and self._redis_down:
            self.dropped_ephemeral += 1
            return
        self._enqueue(_Op(lambda: self.store.publish(event), type(event).__name__, event.call_sid, ephemeral))

    def call(self, call_sid: str, what: str, write: Callable[[], Awaitable[object]]) -> None:
        """Any other store write of the call path, e.g. ``lambda: store.call_ended(sid, ended_at=t)``."""
        self._enqueue(_Op(write, what, call_sid, False))

    def _enqueue(self, op: _Op) -> None:
        if len(self._queue) >= self.max_pending:
            self.dropped += 1
            logger.error(
                "store write-behind full (%d pending): dropped a %s (%d dropped so far)",
                len(self._queue), op.what, self.dropped,
                extra={"call_sid": op.call_sid},
            )  # fmt: skip
            return
        self._queue.append(op)
        self._submitted += 1
        self._wakeup.set()
        if self._task is None:
            with contextlib.suppress(RuntimeError):
                self.start()

    # -- background ---

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every write submitted before this call is done; False on timeout."""
        target = self._submitted
        try:
            async with asyncio.timeout(timeout):
                async with self._progress:
                    await self._progress.wait_for(lambda: self._done >= target)
        except TimeoutError:
            return False
        return True

    async def _finish(self) -> None:
        self._queue.popleft()
        self._done += 1
        async with self._progress:
            self._progress.notify_all()

    async def _run(self) -> None:
        delay = self.backoff_initial
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            op = self._queue[0]
            try:
                await op.run()
            except UNAVAILABLE as exc:
                if not self._redis_down:
                    logger.warning("redis unreachable, buffering writes: %s", exc,
                                   extra={"call_sid": op.call_sid})  # fmt: skip
                self._redis_down = True
                if op.ephemeral:
                    self.dropped_ephemeral += 1
                    await self._finish()
                    self._drop_ephemeral()
                    continue
                await asyncio.sleep(delay)
                delay = min(self.backoff_max, delay * 2)
                self._drop_ephemeral()
                continue
            except Exception:
                self.failed += 1
                logger.exception("store write failed: %s", op.what, extra={"call_sid": op.call_sid})
            else:
                self.written += 1
                if self._redis_down:
                    logger.info("redis reachable again, %d writes pending", len(self._queue) - 1,
                                extra={"call_sid": op.call_sid})  # fmt: skip
                self._redis_down = False
                delay = self.backoff_initial
            await self._finish()

    def _drop_ephemeral(self) -> None:
        """While Redis is down, queued partials are worthless: drop them (keep the head)."""
        if len(self._queue) <= 1:
            return
        head = self._queue.popleft()
        kept = collections.deque(op for op in self._queue if not op.ephemeral)
        removed = len(self._queue) - len(kept)
        self._queue = kept
        self._queue.appendleft(head)
        if removed:
            self.dropped_ephemeral += removed
            self._done += removed


__all__ = ["UNAVAILABLE", "CallInfo", "FinalsWriter", "Store", "client_from_url"]
