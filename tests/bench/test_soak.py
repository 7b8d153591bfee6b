"""The soak command itself: a short soak with recognizer kills reports no lost and no doubled finals."""

from __future__ import annotations

from pathlib import Path

from bridge.bench.soak import soak


async def test_short_soak_with_recognizer_kills_loses_and_doubles_nothing(
    redis_url: str, tmp_path: Path
) -> None:
    report = await soak(seconds=9, calls=2, call_seconds=4, speed=2, kill_every=1.0, down_for=0.2,
                        redis_url=redis_url, out=tmp_path)
    assert report.calls >= 2
    assert report.kills >= 1
    assert report.expected > 0 and report.stored == report.expected
    assert report.lost == 0 and report.duplicated == 0
