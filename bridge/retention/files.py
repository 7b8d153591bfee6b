"""A call's files on disk, and the sweeper that deletes them once they are past the retention.

Every file the bridge and the worker write for a call lives directly in the recording directory and
is named after its CallSid (``<sid>.wav``, ``<sid>.2.wav``, ``<sid>.<RecordingSid>.twilio.wav``, their
``.batch.json``, the hidden temporary files of atomic writes): :func:`call_of` recognises them, and
nothing else there is ever touched.

A pass of the :class:`Sweeper` deletes, at most ``max_deletions`` files (the rest wait for the next
pass):

- files last modified more than the retention ago, unless their call is still active (carried by this
  process, or marked active in Redis: a long call keeps its recording);
- every file of an erased call (its tombstone is in Redis), whatever its age, unless this process
  still carries the call: an erasure on another host, or a late download, is cleaned up here.

Each deletion is logged with its call id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path

import msgspec

from bridge.settings import Settings
from bridge.sids import is_call_sid
from bridge.store import STORE_ERRORS, Store

log = logging.getLogger(__name__)

_SID_LENGTH = 34
#: Redis lookups of one pass go in pipelines of this many calls.
_LOOKUP_CHUNK = 500


def call_of(name: str) -> str | None:
    """The CallSid a file of the recording directory belongs to, or ``None`` for any other file."""
    bare = name[1:] if name.startswith(".") else name
    sid = bare[:_SID_LENGTH]
    if len(bare) > _SID_LENGTH and bare[_SID_LENGTH] == "." and is_call_sid(sid):
        return sid
    return None


def call_files(directory: Path, call_sid: str) -> list[Path]:
    """Every file of one call in ``directory`` (none when it does not exist)."""
    try:
        with os.scandir(directory) as entries:
            mine = [e for e in entries if call_of(e.name) == call_sid and e.is_file(follow_symlinks=False)]
        return sorted(Path(e.path) for e in mine)
    except FileNotFoundError:
        return []


def delete_files(paths: list[Path]) -> list[str]:
    """Delete ``paths``; the names of those that were deleted (a vanished file is not an error)."""
    deleted = []
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.error("cannot delete %s: %s", path.name, exc, extra={"call_sid": call_of(path.name) or ""})
            continue
        deleted.append(path.name)
    return deleted


class SweepReport(msgspec.Struct, kw_only=True):
    """What one pass did."""

    scanned: int = 0
    #: File names deleted, by CallSid.
    deleted: dict[str, list[str]] = msgspec.field(default_factory=dict)
    #: Files past the retention kept because their call is active.
    kept_active: int = 0
    #: True when the pass stopped at ``max_deletions`` (more are due).
    truncated: bool = False

    @property
    def files(self) -> int:
        return sum(len(v) for v in self.deleted.values())


class Sweeper:
    """Deletes files past the retention, and every file of erased calls (see the module's doc)."""

    def __init__(
        self,
        store: Store,
        directory: Path,
        retention_seconds: int,
        *,
        local_calls: Callable[[], Collection[str]] = frozenset,
        max_deletions: int = 1000,
    ) -> None:
        self.store = store
        self.directory = directory
        self.retention_seconds = retention_seconds
        self.local_calls = local_calls
        self.max_deletions = max_deletions

    def _scan(self, now: float) -> tuple[int, dict[str, list[tuple[Path, bool]]]]:
        """(files seen, call -> [(path, past the retention)])."""
        by_call: dict[str, list[tuple[Path, bool]]] = {}
        seen = 0
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    sid = call_of(entry.name)
                    if sid is None or not entry.is_file(follow_symlinks=False):
                        continue
                    seen += 1
                    with contextlib.suppress(FileNotFoundError):
                        expired = now - entry.stat(follow_symlinks=False).st_mtime > self.retention_seconds
                        by_call.setdefault(sid, []).append((Path(entry.path), expired))
        except FileNotFoundError:
            pass
        return seen, by_call

    async def _states(self, sids: list[str]) -> dict[str, tuple[bool, bool]]:
        """call -> (erased, active in Redis)."""
        k = self.store.keys
        out: dict[str, tuple[bool, bool]] = {}
        for i in range(0, len(sids), _LOOKUP_CHUNK):
            chunk = sids[i : i + _LOOKUP_CHUNK]
            async with self.store.client.pipeline(transaction=False) as pipe:
                for sid in chunk:
                    pipe.exists(k.tombstone(sid))
                    pipe.zscore(k.active_calls, sid)
                res = await pipe.execute()
            for j, sid in enumerate(chunk):
                out[sid] = (bool(res[2 * j]), res[2 * j + 1] is not None)
        return out

    async def sweep_once(self, now: float | None = None) -> SweepReport:
        now = time.time() if now is None else now
        seen, by_call = await asyncio.to_thread(self._scan, now)
        report = SweepReport(scanned=seen)
        local = set(self.local_calls())
        states = await self._states(sorted(sid for sid in by_call if sid not in local))
        budget = self.max_deletions
        for sid, files in sorted(by_call.items()):
            if sid in local:
                report.kept_active += sum(1 for _, expired in files if expired)
                continue
            erased, active = states[sid]
            if erased:
                doomed = [path for path, _ in files]
            else:
                doomed = [path for path, expired in files if expired]
                if active and doomed:
                    report.kept_active += len(doomed)
                    continue
            if not doomed:
                continue
            if len(doomed) > budget:
                report.truncated = True
                doomed = doomed[:budget]
            deleted = await asyncio.to_thread(delete_files, doomed)
            budget -= len(doomed)
            if deleted:
                report.deleted[sid] = deleted
                why = "the call was erased" if erased else f"past the retention of {self.retention_seconds} s"
                log.info("retention: deleted %s (%s)", ", ".join(deleted), why, extra={"call_sid": sid})
            if budget <= 0:
                report.truncated = True
                break
        return report


@contextlib.asynccontextmanager
async def sweeping(store: Store, settings: Settings, *,
                   local_calls: Callable[[], Collection[str]] = frozenset) -> AsyncIterator[Sweeper]:  # fmt: skip
    """A sweeper passing every ``BRIDGE_SWEEP_INTERVAL_SECONDS`` while the context lasts."""
    sweeper = Sweeper(store, settings.recording_dir, settings.retention_seconds, local_calls=local_calls)

    async def loop() -> None:
        while True:
            try:
                report = await sweeper.sweep_once()
                if report.truncated:
                    log.info("retention: %d files deleted, more are due (next pass soon)", report.files)
            except STORE_ERRORS as exc:
                log.warning("retention sweep skipped: Redis unavailable (%s)", exc)
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(settings.sweep_interval_seconds)

    task = asyncio.create_task(loop(), name="retention-sweeper")
    try:
        yield sweeper
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def sweep_now(settings: Settings) -> SweepReport:
    """``bridge sweep``: one pass over ``BRIDGE_RECORDING_DIR`` (no call is carried by this process)."""
    store = await Store.open(settings)
    try:
        return await Sweeper(store, settings.recording_dir, settings.retention_seconds).sweep_once()
    finally:
        await store.close()


__all__ = ["SweepReport", "Sweeper", "call_files", "call_of", "delete_files", "sweep_now", "sweeping"]
