"""Erasing one call everywhere this process can reach: Redis (:meth:`bridge.store.Store.delete_call`)
and its files in the recording directory. Files on another host (a worker's download) are deleted by
that host's sweeper, which finds the call's tombstone."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec

from bridge.retention.files import call_files, delete_files
from bridge.store import Erased, Store


class Erasure(msgspec.Struct, kw_only=True, frozen=True):
    """What was erased (the audit log line)."""

    redis: Erased
    files: list[str]


async def erase_call(store: Store, recording_dir: Path, call_sid: str) -> Erasure:
    """Erase ``call_sid`` (a validated CallSid): Redis first, so nothing can recreate the files' call;
    its words leave the search index before its finals go (the index is found from them)."""
    await store.remove_call(call_sid)
    erased = await store.delete_call(call_sid)
    files = await asyncio.to_thread(lambda: delete_files(call_files(recording_dir, call_sid)))
    return Erasure(redis=erased, files=files)


__all__ = ["Erasure", "erase_call"]
