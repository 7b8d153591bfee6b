"""Which streams of a call are still running, across instances: what stream handoff and crash
recovery decide on (:mod:`bridge.call.handoff`).

A stream joins the call's live set when it starts (:meth:`CallRecords.call_started`) and leaves it
when its instance sees it stop or Twilio's status callback reports its end. A call still active with
no live stream left has lost its stream: exactly one instance claims its recovery (``recovering``),
and the claim is released when a stream runs again or the attempt fails.
"""

from __future__ import annotations

import functools

import msgspec
from redis.commands.core import AsyncScript

from bridge.store.calls import F_STREAM_GAPS, HANDOFF_FIELDS
from bridge.store.client import StoreBase, text

#: Twilio call statuses after which a call has nothing left to stream.
_OVER = ("completed", "busy", "failed", "no-answer", "canceled")

# KEYS: live set, call hash. ARGV: the StreamSid that ended, then the final call statuses.
# 1 when the caller now owns the recovery of an active call left without a stream, else 0. A stream
# its own instance saw stop (a ``stop``, a TwiML <Stop><Stream>) has left the set already: never replaced.
_CLAIM = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('SCARD', KEYS[1]) > 0 then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= 'active' then return 0 end
local call_status = redis.call('HGET', KEYS[2], 'call_status')
for i = 2, #ARGV do
  if call_status == ARGV[i] then return 0 end
end
return redis.call('HSETNX', KEYS[2], 'recovering', ARGV[1])
"""

# KEYS: call hash, its tombstone. ARGV: start, end, field. Appends one gap to the JSON list (created
# when absent); nothing for an erased call.
_ADD_GAP = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local raw = redis.call('HGET', KEYS[1], ARGV[3])
local gaps = {}
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' then gaps = decoded end
end
gaps[#gaps + 1] = {start = tonumber(ARGV[1]), ['end'] = tonumber(ARGV[2])}
redis.call('HSET', KEYS[1], ARGV[3], cjson.encode(gaps))
return #gaps
"""


class HandoffState(msgspec.Struct, kw_only=True):
    """What the instances handing a call over have written on its record (strings as stored, "" when
    absent; :mod:`bridge.call.handoff` parses them and never trusts them to parse)."""

    #: Call-clock second the carrying instance's audio had reached at its last heartbeat.
    audio_at: str = ""
    #: The replacement stream that took the call over, and its cut (call-clock second).
    handoff_stream: str = ""
    handoff_at: str = ""
    #: ``"<StreamSid> <base64>"``: the replacement's first inbound audio, until it is placed.
    handoff_probe: str = ""
    #: ``"<StreamSid> <second>"``: where the old instance found that audio (``-``: not found).
    handoff_origin: str = ""
    #: The cut up to which the old instance wrote the recording and stored its finals.
    handoff_done: str = ""
    recovering: str = ""
    #: ``browser`` for a browser capture (not a Twilio call).
    source: str = ""


class StreamRecords(StoreBase):
    """The call's running streams, the recovery claim and the stream gaps."""

    @functools.cached_property
    def _claim_script(self) -> AsyncScript:
        return self.client.register_script(_CLAIM)

    @functools.cached_property
    def _gap_script(self) -> AsyncScript:
        return self.client.register_script(_ADD_GAP)

    async def handoff_state(self, call_sid: str) -> HandoffState:
        names = [*HANDOFF_FIELDS, "source"]
        values = await self.client.hmget(self.keys.call(call_sid), names)
        return HandoffState(**{n: text(v) for n, v in zip(names, values, strict=True) if v is not None})

    async def forget_probe(self, call_sid: str) -> None:
        """The replacement was placed: its audio leaves the record."""
        await self.client.hdel(self.keys.call(call_sid), "handoff_probe")

    async def stream_closed(self, call_sid: str, stream_sid: str) -> None:
        """This instance saw the stream end (``stop``, or its socket closed)."""
        await self.client.srem(self.keys.live_streams(call_sid), stream_sid)

    async def live_stream_count(self, call_sid: str) -> int:
        return int(await self.client.scard(self.keys.live_streams(call_sid)))

    async def claim_recovery(self, call_sid: str, stream_sid: str) -> bool:
        """``stream_sid`` ended: True when this caller must replace it (its instance did not see it end,
        the call is active, no other stream of it runs, and nobody claimed its recovery yet)."""
        keys = [self.keys.live_streams(call_sid), self.keys.call(call_sid)]
        return bool(await self._claim_script(keys=keys, args=[stream_sid, *_OVER]))

    async def release_recovery(self, call_sid: str) -> None:
        await self.client.hdel(self.keys.call(call_sid), "recovering")

    async def add_stream_gap(self, call_sid: str, start: float, end: float) -> None:
        keys = [self.keys.call(call_sid), self.keys.tombstone(call_sid)]
        await self._gap_script(keys=keys, args=[round(start, 3), round(end, 3), F_STREAM_GAPS])


__all__ = ["HandoffState", "StreamRecords"]
