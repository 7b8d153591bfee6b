"""The decode scheduler: finals before partials, coalescing, skipping stale partials (no model)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from bridge.embedded.scheduler import DecodeScheduler

pytestmark = pytest.mark.timeout(30)


async def test_finals_run_before_partials_and_partials_coalesce() -> None:
    sched = DecodeScheduler(1, partial_max_wait=60)
    gate = threading.Event()
    order: list[str] = []

    def blocker() -> str:
        gate.wait(10)
        return "blocker"

    def job(name: str) -> str:
        order.append(name)
        return name

    first = sched.submit_final("a", blocker)
    p1 = sched.submit_partial("a", lambda: job("partial-a1"))
    p2 = sched.submit_partial("a", lambda: job("partial-a2"))  # replaces a1
    pb = sched.submit_partial("b", lambda: job("partial-b"))
    f2 = sched.submit_final("b", lambda: job("final-b"))
    assert sched.stats().queued_finals == 1 and sched.stats().queued_partials == 2
    gate.set()
    assert await first == "blocker"
    assert await p1 is None
    assert list(await asyncio.gather(f2, p2, pb)) == ["final-b", "partial-a2", "partial-b"]
    assert order == ["final-b", "partial-a2", "partial-b"]
    assert sched.replaced_partials == 1
    sched.close()


async def test_stale_partials_are_skipped_not_finals() -> None:
    sched = DecodeScheduler(1, partial_max_wait=0.0)
    gate = threading.Event()
    busy = sched.submit_final("a", lambda: gate.wait(10))
    stale = sched.submit_partial("b", lambda: "never")
    final = sched.submit_final("b", lambda: "final")
    time.sleep(0.01)
    gate.set()
    await busy
    assert await final == "final"
    assert await stale is None
    assert sched.skipped_partials == 1
    sched.close()


async def test_cancel_stream_drops_its_queued_work() -> None:
    sched = DecodeScheduler(1)
    gate = threading.Event()
    busy = sched.submit_final("a", lambda: gate.wait(10))
    dropped = sched.submit_final("gone", lambda: "x")
    kept = sched.submit_final("b", lambda: "y")
    sched.cancel_stream("gone")
    gate.set()
    await busy
    assert await dropped is None
    assert await kept == "y"
    sched.close()


async def test_saturation_is_reported() -> None:
    sched = DecodeScheduler(1)
    gate = threading.Event()
    futures = [sched.submit_final(str(i), lambda: gate.wait(10)) for i in range(3)]
    assert sched.saturated
    gate.set()
    await asyncio.gather(*futures)
    assert not sched.saturated
    sched.close()


async def test_finals_that_queued_up_share_one_decode() -> None:
    """Under load, queued finals are packed (up to the window) instead of each waiting its turn."""
    from bridge.embedded.scheduler import Packable

    sched = DecodeScheduler(1, partial_max_wait=60, pack_seconds=9.0, pack_seam=0.4)
    gate = threading.Event()
    batches: list[list[str]] = []

    def run_many(payloads: list[str]) -> list[str]:
        batches.append(payloads)
        return [p.upper() for p in payloads]

    def pack(name: str, seconds: float, key: str = "base") -> Packable:
        return Packable(key=key, seconds=seconds, payload=name, run_many=run_many)

    busy = sched.submit_final("s0", lambda: (gate.wait(10), "first")[1], pack=pack("first", 1.0))
    waiting = [
        sched.submit_final("s1", lambda: "alone-1", pack=pack("a", 3.0)),
        sched.submit_final("s2", lambda: "alone-2", pack=pack("b", 2.0)),
        sched.submit_final("s3", lambda: "alone-3", pack=pack("c", 3.0)),  # 3 + 0.4 + 2 + 0.4 + 3 = 8.8 s: fits
        sched.submit_final("s4", lambda: "alone-4", pack=pack("d", 1.0)),  # would make 10.2 s: next decode
        sched.submit_final("s5", lambda: "alone-5", pack=pack("e", 1.0, key="other-model")),
        sched.submit_final("s6", lambda: "alone-6"),  # not packable
    ]
    gate.set()
    assert await busy == "first"
    assert list(await asyncio.gather(*waiting)) == ["A", "B", "C", "alone-4", "alone-5", "alone-6"]
    assert batches == [["a", "b", "c"]]
    assert sched.stats().packed_finals == 3


async def test_a_segments_first_partial_goes_before_updates_of_shown_segments() -> None:
    """Under load the agent sees a new speaker's first words on time; updates of text already on
    screen wait (and, past ``partial_max_wait``, are skipped)."""
    sched = DecodeScheduler(1, partial_max_wait=60)
    gate = threading.Event()
    order: list[str] = []

    def job(name: str) -> str:
        order.append(name)
        return name

    busy = sched.submit_final("x", lambda: gate.wait(10))
    update_a = sched.submit_partial("a", lambda: job("update-a"))
    update_b = sched.submit_partial("b", lambda: job("update-b"))
    first_c = sched.submit_partial("c", lambda: job("first-c"), first=True)
    first_d = sched.submit_partial("d", lambda: job("first-d"), first=True)
    replaced = sched.submit_partial("d", lambda: job("first-d, newer audio"))  # still the segment's first
    gate.set()
    await busy
    await asyncio.gather(update_a, update_b, first_c, first_d, replaced)
    assert order == ["first-c", "first-d, newer audio", "update-a", "update-b"]
    sched.close()
