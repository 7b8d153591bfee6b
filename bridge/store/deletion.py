"""Erasing a call, and the tombstone that keeps it erased.

:meth:`CallDeletion.delete_call` writes the call's tombstone (``Keys.tombstone``) and deletes every
key of the call in one transaction of the call's slot, then takes the call out of the indexes
(``{calls}``), and its entries out of the recording jobs and the webhook outbox. Every writer of a call
checks the tombstone in the same slot as its write (the finals script, the call record's writes,
the batch results below), so a late final, status callback, batch job or stream of that CallSid
never brings the call back. The tombstone holds only the time of the erasure and expires with the
retention, like the data it stood for.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping

import msgspec
from redis.commands.core import AsyncScript

from bridge.store.client import StoreBase
from bridge.store.jobs import JobQueue

# KEYS: tombstone, then the documents to set (all of one call: one slot). ARGV: TTL seconds, then one
# value per document. Sets nothing and returns 0 when the call was erased.
_SET_UNLESS_DELETED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i], 'EX', ARGV[1])
end
return 1
"""


class Erased(msgspec.Struct, kw_only=True, frozen=True):
    """What :meth:`CallDeletion.delete_call` removed (the audit log line says it)."""

    call_sid: str
    #: Names of the call's keys that existed.
    keys: list[str]
    #: Entries removed from the call indexes (active, recent, flagged…).
    index_entries: int
    #: Recording jobs (queued, pending or dead) of the call removed.
    jobs: int
    #: Webhook deliveries of the call not sent yet (or dead) removed.
    webhooks: int


class CallDeletion(StoreBase):
    """Erasure of calls, and the writes that respect it."""

    @functools.cached_property
    def _set_unless_deleted_script(self) -> AsyncScript:
        return self.client.register_script(_SET_UNLESS_DELETED)

    async def call_deleted(self, call_sid: str) -> bool:
        """True when the call was erased (within the retention window)."""
        return bool(await self.client.exists(self.keys.tombstone(call_sid)))

    async def _ttl(self, call_sid: str) -> int:
        """The call's remaining retention when it has one (the call ended), else the full retention."""
        ttl = int(await self.client.ttl(self.keys.call(call_sid)))
        return ttl if ttl > 0 else max(1, int(self.retention_seconds))

    async def save_call_documents(self, call_sid: str, documents: Mapping[str, bytes | str]) -> bool:
        """Set documents of a call (e.g. the compliance report) so that they expire with the call: its
        remaining retention once it ended, else the full one. ``False``: the call was erased, nothing set."""
        return await self.set_call_documents(call_sid, documents, await self._ttl(call_sid))

    async def set_call_documents(self, call_sid: str, documents: Mapping[str, bytes | str], ttl: int) -> bool:
        """Set keys of one call (``documents``: key -> value) with ``ttl``, unless the call was erased
        (then nothing is written and the answer is ``False``)."""
        if not documents:
            return True
        keys = [self.keys.tombstone(call_sid), *documents]
        args: list[bytes | str | int] = [max(1, ttl), *documents.values()]
        return bool(await self._set_unless_deleted_script(keys=keys, args=args))

    async def delete_call(self, call_sid: str) -> Erased:
        """Erase every trace of a call in Redis and leave its tombstone (see the module's doc)."""
        k = self.keys
        names = k.call_keys(call_sid)
        ttl = max(1, int(self.retention_seconds))
        async with self.client.pipeline(transaction=True) as tx:  # the call's slot: one step
            tx.set(k.tombstone(call_sid), repr(time.time()), ex=ttl)
            for name in names:
                tx.delete(name)
            res = await tx.execute()
        existed = [name for name, n in zip(names, res[1:], strict=True) if n]
        async with self.client.pipeline(transaction=True) as tx:  # the indexes: their own slot
            for index in k.call_indexes:
                tx.zrem(index, call_sid)
            removed = sum(int(n) for n in await tx.execute())
        jobs = await JobQueue(self.client, k).purge(call_sid)
        webhooks = await JobQueue(self.client, k, queue=k.webhook_queue).purge(call_sid)
        return Erased(call_sid=call_sid, keys=existed, index_entries=removed, jobs=jobs, webhooks=webhooks)


__all__ = ["CallDeletion", "Erased"]
