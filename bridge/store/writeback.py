"""Write-behind between the call path and Redis: the call path never waits on Redis.

Finals, live events and call records are submitted to a :class:`FinalsWriter`, whose background
task writes them in order, each once, retrying while Redis is unreachable, with bounded memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import msgspec

from bridge import events
from bridge.retry import Backoff
from bridge.store.client import UNAVAILABLE

logger = logging.getLogger(__name__)


class StoreWrites(Protocol):
    """What the writer needs of the store."""

    async def add_final(self, final: events.Final) -> int | None: ...
    async def publish(self, event: events.LiveEvent) -> None: ...
    async def publish_many(self, batch: list[events.LiveEvent]) -> None: ...


class _Op(msgspec.Struct):
    run: Callable[[], Awaitable[object]]
    what: str
    call_sid: str
    ephemeral: bool
    #: A partial to publish: consecutive ones go to Redis in one round trip.
    partial: events.LiveEvent | None = None


#: Most partials published in one round trip.
PUBLISH_BATCH = 64


class FinalsWriter:
    """Write-behind between the call path and Redis: submitting never blocks.

    One background task runs the submitted writes in order, each once, retrying with exponential
    backoff while Redis is unreachable. Ephemeral events (partials) are dropped rather than retried.
    At most ``max_pending`` writes wait; past that, new ones are dropped, counted in :attr:`dropped`,
    and logged. :meth:`flush` waits until everything submitted so far is written.
    """

    def __init__(
        self,
        store: StoreWrites,
        *,
        max_pending: int = 10_000,
        backoff: Backoff = Backoff(base=0.05, cap=5.0),
        on_outage: Callable[[], None] | None = None,
        on_final: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        #: Called each time Redis is found unreachable after having been reachable (a metric).
        self.on_outage = on_outage
        #: Called with True for each final stored, False for one that was already there (metrics).
        self.on_final = on_final
        #: Outages seen so far (Redis unreachable, then reachable again or not yet).
        self.outages = 0
        self.max_pending = max_pending
        self.backoff = backoff
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
        self._enqueue(_Op(lambda: self._add_final(final), "final", final.call_sid, False))

    async def _add_final(self, final: events.Final) -> None:
        seq = await self.store.add_final(final)
        if self.on_final is not None:
            self.on_final(seq is not None)

    def publish(self, event: events.LiveEvent) -> None:
        """Publish a live event; finals go to :meth:`submit`, partials are dropped while Redis is down."""
        if isinstance(event, events.Final):
            self.submit(event)
            return
        ephemeral = isinstance(event, events.Partial)
        if ephemeral and self._redis_down:
            self.dropped_ephemeral += 1
            return
        self._enqueue(_Op(lambda: self.store.publish(event), type(event).__name__, event.call_sid, ephemeral,
                          event if ephemeral else None))  # fmt: skip

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

    async def _finish(self, count: int = 1) -> None:
        for _ in range(count):
            self._queue.popleft()
        self._done += count
        async with self._progress:
            self._progress.notify_all()

    def _partials_at_head(self) -> list[events.LiveEvent]:
        """The partials queued at the head, in order (at most :data:`PUBLISH_BATCH`)."""
        batch: list[events.LiveEvent] = []
        for op in self._queue:
            if op.partial is None or len(batch) >= PUBLISH_BATCH:
                break
            batch.append(op.partial)
        return batch

    async def _run(self) -> None:
        attempt = 0
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            op = self._queue[0]
            batch = self._partials_at_head() if op.partial is not None else []
            try:
                if len(batch) > 1:  # partials come a few per second per track: one round trip for all queued
                    await self.store.publish_many(batch)
                else:
                    await op.run()
            except UNAVAILABLE as exc:
                if not self._redis_down:
                    self.outages += 1
                    if self.on_outage is not None:
                        self.on_outage()
                    logger.warning("redis unreachable, buffering writes: %s", exc,
                                   extra={"call_sid": op.call_sid})  # fmt: skip
                self._redis_down = True
                if op.ephemeral:
                    dropped = max(1, len(batch))
                    self.dropped_ephemeral += dropped
                    await self._finish(dropped)
                    self._drop_ephemeral()
                    continue
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1
                self._drop_ephemeral()
                continue
            except Exception:
                self.failed += 1
                logger.exception("store write failed: %s", op.what, extra={"call_sid": op.call_sid})
            else:
                self.written += max(1, len(batch))
                if self._redis_down:
                    logger.info("redis reachable again, %d writes pending", len(self._queue) - 1,
                                extra={"call_sid": op.call_sid})  # fmt: skip
                self._redis_down = False
                attempt = 0
            await self._finish(max(1, len(batch)))

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


__all__ = ["FinalsWriter", "StoreWrites"]
