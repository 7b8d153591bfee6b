"""A bounded pool of decoder threads with priorities, so one busy call never stalls the others.

Scheduling happens on the event loop; only ready jobs go to the threads (CTranslate2 releases the
GIL), never more than ``workers`` at once. Rules:

* finals run before any partial (a final is what gets stored);
* a stream has at most one queued partial: a newer request replaces the older (coalescing);
* a partial that waited longer than ``partial_max_wait`` is dropped, so under load partials are
  skipped before finals are delayed.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Job(Generic[T]):
    stream: str
    fn: Callable[[], T]
    future: asyncio.Future[T | None]
    kind: str
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class SchedulerStats:
    queued_finals: int
    queued_partials: int
    busy: int
    workers: int
    skipped_partials: int
    replaced_partials: int
    oldest_final_wait: float


class DecodeScheduler:
    """Runs decode callables on ``workers`` threads with final-over-partial priority."""

    def __init__(
        self,
        workers: int = 2,
        *,
        partial_max_wait: float = 0.6,
        on_done: Callable[[str, float, float], None] | None = None,
    ) -> None:
        self.workers = max(1, workers)
        self.partial_max_wait = partial_max_wait
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="whisper"
        )
        self._finals: collections.deque[_Job[Any]] = collections.deque()
        self._partials: collections.OrderedDict[str, _Job[Any]] = collections.OrderedDict()
        self._busy = 0
        self.skipped_partials = 0
        self.replaced_partials = 0
        self._on_done = on_done
        self._closed = False

    def stats(self) -> SchedulerStats:
        now = time.monotonic()
        oldest = now - self._finals[0].queued_at if self._finals else 0.0
        return SchedulerStats(
            queued_finals=len(self._finals),
            queued_partials=len(self._partials),
            busy=self._busy,
            workers=self.workers,
            skipped_partials=self.skipped_partials,
            replaced_partials=self.replaced_partials,
            oldest_final_wait=oldest,
        )

    @property
    def load(self) -> float:
        """Running plus queued decodes per worker: below 1 a new decode starts at once."""
        return (self._busy + len(self._finals) + len(self._partials)) / self.workers

    @property
    def saturated(self) -> bool:
        """Every worker busy and finals already waiting: new calls would only add lag."""
        return self._busy >= self.workers and len(self._finals) >= self.workers

    def submit_final(self, stream: str, fn: Callable[[], T]) -> asyncio.Future[T | None]:
        fut: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._finals.append(_Job(stream, fn, fut, "final"))
        self._dispatch()
        return fut

    def submit_partial(self, stream: str, fn: Callable[[], T]) -> asyncio.Future[T | None]:
        """Queue a partial decode; resolves to ``None`` if replaced by a newer one or skipped."""
        fut: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        old = self._partials.get(stream)
        if old is not None:
            self.replaced_partials += 1
            _resolve(old.future, None)
        self._partials[stream] = _Job(stream, fn, fut, "partial")
        self._dispatch()
        return fut

    def cancel_stream(self, stream: str) -> None:
        """Forget queued work of a stream that went away (running work finishes and is dropped)."""
        job = self._partials.pop(stream, None)
        if job is not None:
            _resolve(job.future, None)
        keep = collections.deque(j for j in self._finals if j.stream != stream)
        for j in self._finals:
            if j.stream == stream:
                _resolve(j.future, None)
        self._finals = keep

    def _next(self) -> _Job[Any] | None:
        if self._finals:
            return self._finals.popleft()
        now = time.monotonic()
        while self._partials:
            _, job = self._partials.popitem(last=False)
            if now - job.queued_at > self.partial_max_wait:
                self.skipped_partials += 1
                _resolve(job.future, None)
                continue
            return job
        return None

    def _dispatch(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        while self._busy < self.workers:
            job = self._next()
            if job is None:
                return
            if job.future.done():  # the waiter went away
                continue
            self._busy += 1
            started = time.monotonic()
            cf = loop.run_in_executor(self._executor, job.fn)
            cf.add_done_callback(functools.partial(self._finished, job, started))

    def _finished(self, job: _Job[Any], started: float, f: asyncio.Future[Any]) -> None:
        self._busy -= 1
        now = time.monotonic()
        if self._on_done is not None:
            self._on_done(job.kind, started - job.queued_at, now - started)
        if not job.future.done():
            exc = f.exception()
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(f.result())
        self._dispatch()

    def close(self) -> None:
        self._closed = True
        for job in list(self._finals) + list(self._partials.values()):
            _resolve(job.future, None)
        self._finals.clear()
        self._partials.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)
