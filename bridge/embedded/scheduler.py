"""A bounded pool of decoder threads with priorities, so one busy call never stalls the others.

Scheduling happens on the event loop; only ready jobs go to the threads (CTranslate2 releases the
GIL), never more than ``workers`` at once. Rules:

* finals run before any partial (a final is what gets stored);
* a stream has at most one queued partial: a newer request replaces the older (coalescing);
* a partial that waited longer than ``partial_max_wait`` is dropped, so under load partials are
  skipped before finals are delayed;
* among partials, a segment's first (nothing on the agent's screen yet) goes before updates of
  segments already shown: under load the first words appear on time and updates wait;
* finals that queued up are decoded together when they can be (:class:`Packable`: one encoder pass
  for several finals), so under load the cost of a final shrinks instead of its lag growing.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Packable:
    """How a final can share one decode with the finals queued behind it."""

    #: Only finals with the same key are decoded together (the same model and beam).
    key: Hashable
    #: Seconds of audio it adds to a packed window.
    seconds: float
    payload: Any
    #: Decodes several payloads at once (this job's first); one result per payload, in order.
    run_many: Callable[[list[Any]], list[Any]]


@dataclass
class _Job(Generic[T]):
    stream: str
    fn: Callable[[], T]
    future: asyncio.Future[T | None]
    kind: str
    queued_at: float = field(default_factory=time.monotonic)
    pack: Packable | None = None
    #: A segment's first partial (see the module's rules).
    first: bool = False


@dataclass
class SchedulerStats:
    queued_finals: int
    queued_partials: int
    busy: int
    workers: int
    skipped_partials: int
    replaced_partials: int
    oldest_final_wait: float
    cheap_finals: int = 0
    packed_finals: int = 0
    used_ahead: int = 0
    wasted_ahead: int = 0
    context_finals: int = 0


class DecodeScheduler:
    """Runs decode callables on ``workers`` threads with final-over-partial priority."""

    def __init__(
        self,
        workers: int = 2,
        *,
        partial_max_wait: float = 0.6,
        on_done: Callable[[str, float, float], None] | None = None,
        pack_seconds: float = 9.0,
        pack_seam: float = 0.4,
    ) -> None:
        self.workers = max(1, workers)
        self.partial_max_wait = partial_max_wait
        #: Most audio one packed decode holds (the encoder context less a tail), and the seam between pieces.
        self.pack_seconds = pack_seconds
        self.pack_seam = pack_seam
        #: Finals that shared a decode with another (under load).
        self.packed_finals = 0
        #: Finals decoded ahead of their endpoint, and decodes ahead thrown away (the speaker resumed).
        self.used_ahead = 0
        self.wasted_ahead = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix="whisper"
        )
        self._finals: collections.deque[_Job[Any]] = collections.deque()
        self._partials: collections.OrderedDict[str, _Job[Any]] = collections.OrderedDict()
        self._busy = 0
        self.skipped_partials = 0
        self.replaced_partials = 0
        #: Finals decoded with the fast model because finals were queuing up (two-pass fallback).
        self.cheap_finals = 0
        #: Short finals decoded after the speaker's earlier audio (see ``transcribe_after``).
        self.context_finals = 0
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
            cheap_finals=self.cheap_finals,
            packed_finals=self.packed_finals,
            used_ahead=self.used_ahead,
            wasted_ahead=self.wasted_ahead,
            context_finals=self.context_finals,
        )

    @property
    def load(self) -> float:
        """Running plus queued decodes per worker: below 1 a new decode starts at once."""
        return (self._busy + len(self._finals) + len(self._partials)) / self.workers

    @property
    def final_backlog(self) -> int:
        """Finals waiting for a worker."""
        return len(self._finals)

    @property
    def saturated(self) -> bool:
        """Every worker busy and finals already waiting: new calls would only add lag."""
        return self._busy >= self.workers and len(self._finals) >= self.workers

    def submit_final(
        self, stream: str, fn: Callable[[], T], *, pack: Packable | None = None
    ) -> asyncio.Future[T | None]:
        """Queue a final decode; ``pack`` lets it share a decode with finals queued with it."""
        fut: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._finals.append(_Job(stream, fn, fut, "final", pack=pack))
        self._dispatch()
        return fut

    def submit_partial(self, stream: str, fn: Callable[[], T], *, first: bool = False) -> asyncio.Future[T | None]:
        """Queue a partial decode (``first``: the segment has shown nothing yet); resolves to ``None``
        if replaced by a newer one or skipped."""
        fut: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        old = self._partials.get(stream)  # a replacement keeps its place in the queue
        if old is not None:
            self.replaced_partials += 1
            _resolve(old.future, None)
            first = first or old.first
        self._partials[stream] = _Job(stream, fn, fut, "partial", first=first)
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

    def _take_finals(self) -> list[_Job[Any]]:
        """The next final, and the finals queued behind it that fit in one packed decode with it."""
        first = self._finals.popleft()
        group = [first]
        if first.pack is None:
            return group
        room = self.pack_seconds - first.pack.seconds
        while self._finals:
            nxt = self._finals[0].pack
            if nxt is None or nxt.key != first.pack.key or nxt.seconds + self.pack_seam > room:
                break
            group.append(self._finals.popleft())
            room -= nxt.seconds + self.pack_seam
        return group

    def _next(self) -> _Job[Any] | None:
        now = time.monotonic()
        partials = self._partials
        for stream in [s for s, j in partials.items() if now - j.queued_at > self.partial_max_wait]:
            self.skipped_partials += 1
            _resolve(partials.pop(stream).future, None)
        if not partials:
            return None
        urgent = next((s for s, j in partials.items() if j.first), None)
        if urgent is None:
            return partials.popitem(last=False)[1]
        return partials.pop(urgent)

    def _dispatch(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        while self._busy < self.workers:
            if self._finals:
                group = [j for j in self._take_finals() if not j.future.done()]  # a waiter may have gone
                if not group:
                    continue
            else:
                job = self._next()
                if job is None:
                    return
                if job.future.done():
                    continue
                group = [job]
            self._busy += 1
            started = time.monotonic()
            if len(group) == 1:
                cf = loop.run_in_executor(self._executor, group[0].fn)
            else:
                self.packed_finals += len(group)
                first = group[0].pack
                assert first is not None
                payloads = [j.pack.payload for j in group if j.pack is not None]
                cf = loop.run_in_executor(self._executor, first.run_many, payloads)
            cf.add_done_callback(functools.partial(self._finished, group, started))

    def _finished(self, group: list[_Job[Any]], started: float, f: asyncio.Future[Any]) -> None:
        self._busy -= 1
        now = time.monotonic()
        exc = f.exception()
        results = [None] * len(group) if exc is not None else ([f.result()] if len(group) == 1 else list(f.result()))
        for job, result in zip(group, results, strict=True):
            if self._on_done is not None:
                self._on_done(job.kind, started - job.queued_at, now - started)
            if job.future.done():
                continue
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
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
