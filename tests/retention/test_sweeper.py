"""The retention sweeper over a real recording directory and a real Redis: files past the retention go,
young ones, other files and the files of active calls stay, an erased call's files go whatever their
age, a pass is bounded; ``bridge sweep`` does one pass as a command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bridge.retention.files import Sweeper, call_files, call_of
from bridge.store import Store

OLD, YOUNG, ACTIVE, ERASED, LOCAL = ("CA" + c * 32 for c in "01234")
RETENTION = 3600


def _file(directory: Path, name: str, age: float) -> Path:
    path = directory / name
    path.write_bytes(b"x")
    t = time.time() - age
    os.utime(path, (t, t))
    return path


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    d = tmp_path / "recordings"
    d.mkdir()
    old = RETENTION + 60
    for name, age in [
        (f"{OLD}.wav", old), (f"{OLD}.2.wav", old), (f"{OLD}.batch.json", old),
        (f"{OLD}.RE{'a' * 32}.twilio.wav", old), (f".{OLD}.batch.json.77.tmp", old),
        (f"{YOUNG}.wav", 10), (f"{YOUNG}.batch.json", old),  # the recording is young, its old batch file is not
        (f"{ACTIVE}.wav", old), (f"{LOCAL}.wav", old),
        (f"{ERASED}.wav", 5), (f"{ERASED}.batch.json", 5),
        ("notes.txt", old), ("CA-not-a-sid.wav", old), (".write-check-abc", old),
    ]:  # fmt: skip
        _file(d, name, age)
    (d / f"{OLD}.dir").mkdir()  # not a file: never touched
    return d


def test_only_files_named_after_a_call_sid_belong_to_a_call() -> None:
    assert call_of(f"{OLD}.wav") == OLD and call_of(f".{OLD}.batch.json.1.tmp") == OLD
    assert call_of(f"{OLD}wav") is None and call_of("notes.txt") is None and call_of(OLD) is None
    assert call_of("CA" + "g" * 32 + ".wav") is None


async def test_a_pass_deletes_what_is_past_the_retention_or_erased(store: Store, recordings: Path) -> None:
    await store.client.zadd(store.keys.active_calls, {ACTIVE: time.time() - 7200})
    await store.client.set(store.keys.tombstone(ERASED), "1")
    sweeper = Sweeper(store, recordings, RETENTION, local_calls=lambda: {LOCAL})

    report = await sweeper.sweep_once()

    left = sorted(p.name for p in recordings.iterdir())
    assert left == sorted([f"{YOUNG}.wav", f"{ACTIVE}.wav", f"{LOCAL}.wav", "notes.txt", "CA-not-a-sid.wav",
                           ".write-check-abc", f"{OLD}.dir"])  # fmt: skip
    assert sorted(report.deleted) == sorted([OLD, ERASED, YOUNG])
    assert len(report.deleted[OLD]) == 5 and report.deleted[YOUNG] == [f"{YOUNG}.batch.json"]
    assert report.kept_active == 2 and not report.truncated
    assert (await sweeper.sweep_once()).files == 0  # nothing more is due


async def test_a_pass_is_bounded(store: Store, recordings: Path) -> None:
    sweeper = Sweeper(store, recordings, RETENTION, max_deletions=3)
    first = await sweeper.sweep_once()
    assert first.files == 3 and first.truncated
    second = await sweeper.sweep_once()
    assert second.files > 0
    third = await sweeper.sweep_once()
    assert first.files + second.files + third.files == 8  # OLD 5, YOUNG's batch file, ACTIVE and LOCAL
    assert call_files(recordings, OLD) == []


def test_bridge_sweep_runs_one_pass(redis_url: str, redis_prefix: str, recordings: Path) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "BRIDGE_REDIS_PREFIX": redis_prefix,
           "BRIDGE_RECORDING_DIR": str(recordings), "BRIDGE_RETENTION_SECONDS": str(RETENTION)}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "bridge.cli", "sweep"], env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "8 files of 4 calls deleted" in done.stdout  # OLD (5), YOUNG's batch file, ACTIVE and LOCAL
    logged = [line for line in (done.stdout + done.stderr).splitlines() if "retention: deleted" in line]
    assert len(logged) == 4 and any(OLD in line and f"{OLD}.wav" in line for line in logged)  # with the call id
    assert call_files(recordings, OLD) == [] and (recordings / f"{YOUNG}.wav").exists()
