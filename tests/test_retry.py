"""The one backoff rule of the bridge: 1, 2, 4 … capped, each randomised within its upper half."""

from __future__ import annotations

from bridge.retry import Backoff


def test_delays_double_up_to_the_cap_and_stay_in_the_upper_half() -> None:
    b = Backoff(base=1.0, cap=30.0)
    assert [b.ceiling(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    for n in range(10):
        for _ in range(200):
            assert b.ceiling(n) / 2 <= b.delay(n) <= b.ceiling(n)


def test_jitter_spreads_clients_that_failed_together() -> None:
    delays = {round(Backoff(1.0, 30.0).delay(3), 6) for _ in range(100)}
    assert len(delays) > 50 and min(delays) < 5.0 < max(delays)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert Backoff(0.05, 5.0).delay(10_000) <= 5.0
