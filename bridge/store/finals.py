"""The durable transcript: each call's finals, stored once, numbered, and published in one step.

Each final is stored once per ``Final.id`` and gets a per-call ``seq`` (1, 2, 3… in insertion
order). Storing it and publishing it on the call's channel happen in one Lua script, so a subscriber
that subscribes first and then reads the snapshot misses nothing and de-duplicates by ``seq``.
Ephemeral events (partials, status) are published only.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator

import msgspec
from redis.commands.core import AsyncScript

from bridge import events
from bridge.store.calls import TRACK_ORDER
from bridge.store.client import pubsub_of
from bridge.store.search import SearchIndex

logger = logging.getLogger(__name__)

# KEYS: final_ids, finals, call, tombstone (one call: one cluster slot). ARGV: final id, final JSON
# without seq, channel (not a key: pub/sub reaches every node). Returns the new seq, or nil when the id
# is stored or the call was erased (a late final never brings an erased call back).
_ADD_FINAL = """
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return false
end
local seq = redis.call('LLEN', KEYS[2]) + 1
local doc = string.sub(ARGV[2], 1, -2) .. ',"seq":' .. seq .. '}'
redis.call('RPUSH', KEYS[2], doc)
redis.call('HSET', KEYS[1], ARGV[1], seq)
redis.call('HSET', KEYS[3], 'finals', seq)
local ttl = redis.call('TTL', KEYS[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('PUBLISH', ARGV[3], doc)
return seq
"""


# No KEYS (channels are not keys: pub/sub reaches every node). ARGV: channel, message, channel, message...
_PUBLISH_MANY = """
for i = 1, #ARGV, 2 do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""


def audio_order(final: events.Final) -> tuple[float, int, float, str]:
    """Sort key of finals in audio order: start time, then caller before agent."""
    return (final.start, TRACK_ORDER.get(final.track, 9), final.end, final.id)


class FinalLog(SearchIndex):
    """Finals and live events of calls (and the search index, kept as finals are written)."""

    @functools.cached_property
    def _add_final_script(self) -> AsyncScript:
        return self.client.register_script(_ADD_FINAL)

    async def add_final(self, final: events.Final) -> int | None:
        """Store a final once per id, publish it, and return its seq (``None`` if already stored, or
        if the call was erased)."""
        k = self.keys
        doc = events.encode(msgspec.structs.replace(final, seq=0))
        result = await self._add_final_script(
            keys=[k.final_ids(final.call_sid), k.finals(final.call_sid), k.call(final.call_sid),
                  k.tombstone(final.call_sid)],
            args=[final.id, doc, k.channel(final.call_sid)],
        )  # fmt: skip
        # Indexed also when already stored (a retry may follow a failed index write), never once erased.
        if result is not None or not await self.client.exists(k.tombstone(final.call_sid)):
            await self.index_final(final)
        return None if result is None else int(result)

    async def finals(self, call_sid: str, *, after_seq: int = 0) -> list[events.Final]:
        """The call's finals with ``seq > after_seq``, in seq order."""
        raw = await self.client.lrange(self.keys.finals(call_sid), max(0, after_seq), -1)
        return [events.decode_final(doc) for doc in raw]

    async def transcript(self, call_sid: str) -> list[events.Final]:
        """The call's finals in audio order (start time, then caller before agent)."""
        return sorted(await self.finals(call_sid), key=audio_order)

    async def publish(self, event: events.LiveEvent) -> None:
        """Publish an ephemeral live event on its call's channel (finals go through :meth:`add_final`)."""
        await self.client.publish(self.keys.channel(event.call_sid), events.encode(event))

    @functools.cached_property
    def _publish_many_script(self) -> AsyncScript:
        return self.client.register_script(_PUBLISH_MANY)

    async def publish_many(self, batch: list[events.LiveEvent]) -> None:
        """Publish several ephemeral events in one round trip, in order (a script: redis-py's cluster
        pipeline refuses PUBLISH)."""
        args: list[str | bytes] = []
        for event in batch:
            args += [self.keys.channel(event.call_sid), events.encode(event)]
        await self._publish_many_script(keys=[], args=args)

    @contextlib.asynccontextmanager
    async def subscribe(self, call_sid: str) -> AsyncIterator[AsyncIterator[events.LiveEvent]]:
        """A private pub/sub subscription to one call (tools, tests). Servers use ``live.Hub``.

        Subscribed when the context is entered; the iterator yields live events until the context exits.
        """
        pubsub = await pubsub_of(self.client, ignore_subscribe_messages=True)
        await pubsub.subscribe(self.keys.channel(call_sid))

        async def iterate() -> AsyncIterator[events.LiveEvent]:
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is None or message.get("type") != "message":
                    continue
                try:
                    yield events.decode(message["data"])
                except (msgspec.DecodeError, msgspec.ValidationError):
                    logger.warning("undecodable live event", extra={"call_sid": call_sid})

        try:
            yield iterate()
        finally:
            await pubsub.aclose()


__all__ = ["FinalLog", "audio_order"]
