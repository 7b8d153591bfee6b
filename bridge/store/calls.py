"""Call records: one hash per call, and the index of active and recently ended calls.

A call's keys and the index are in different cluster slots (see :mod:`bridge.store.keys`), so each
change is two transactions: the call's record first, then the index that points to it.

:meth:`CallRecords.call_started` and :meth:`CallRecords.call_ended` publish the ``call_started`` /
``call_ended`` live events themselves (on the call's channel and on the all-calls channel); callers
do not publish them again. Everything of a call gets the retention TTL when the call ends, and a
record that is not an active call never goes without one (a status callback for a call that never
streamed creates a record that expires like any other). No write brings back an erased call
(:mod:`bridge.store.deletion`): each one checks the call's tombstone in its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TypeVar

import msgspec
from redis.commands.core import AsyncScript

from bridge import events
from bridge.store.client import StoreBase, as_mapping, text, text_dict

logger = logging.getLogger(__name__)
TRACK_ORDER = {"inbound": 0, "outbound": 1}
T = TypeVar("T")

# Hash fields of P:call:{<sid>} with a meaning of their own; everything else lands in CallInfo.extra.
_F_STATUS = "status"
_F_STARTED = "started_at"
_F_ENDED = "ended_at"
_F_REASON = "end_reason"
_F_ACCOUNT = "account_sid"
_F_FROM = "from"
_F_TO = "to"
_F_FINALS = "finals"
#: Call-clock second the call's audio reached when it ended (where a returning CallSid resumes).
_F_AUDIO_END = "audio_end"
#: JSON list of StreamGap (written by :mod:`bridge.store.streams`).
F_STREAM_GAPS = "stream_gaps"
#: The instances' own bookkeeping of stream handoff (:class:`bridge.store.streams.HandoffState`): not
#: part of the call's document.
HANDOFF_FIELDS = ("audio_at", "handoff_stream", "handoff_at", "handoff_probe", "handoff_origin", "handoff_done",
                  "recovering")  # fmt: skip
_KNOWN = frozenset({_F_STATUS, _F_STARTED, _F_ENDED, _F_REASON, _F_ACCOUNT, _F_FROM, _F_TO, _F_FINALS,
                    F_STREAM_GAPS, *HANDOFF_FIELDS})  # fmt: skip
_TRACK_PREFIX = "track."
_RECOGNIZER_PREFIX = "recognizer."
_SERVED_PREFIX = "served."
_GAPS_PREFIX = "gaps."
_CUSTOM_PREFIX = "custom."
#: The hash field the finals script keeps the count in (see :mod:`bridge.store.finals`).
FINALS_FIELD = _F_FINALS

# KEYS: call hash, its tombstone. ARGV: retention seconds, then field, value, field, value…
# Sets the fields (none for an erased call); a record that is not an active call and has no TTL gets
# the retention TTL.
_UPDATE_CALL = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
if redis.call('TTL', KEYS[1]) == -1 and redis.call('HGET', KEYS[1], 'status') ~= 'active' then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
"""


class StreamGap(msgspec.Struct):
    """Call time no stream carried: the instance carrying the call died and a replacement stream
    started (``start``: the last second its heartbeat reported; ``end``: the replacement's start)."""

    start: float
    end: float


class CallInfo(msgspec.Struct, kw_only=True, omit_defaults=False):
    """What the store knows about one call (the ``GET /calls/{sid}`` document)."""

    call_sid: str
    #: ``active`` or ``ended`` (empty when only a status callback has been seen so far).
    status: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    end_reason: str = ""
    account_sid: str = ""
    from_number: str = ""
    to_number: str = ""
    tracks: list[str] = msgspec.field(default_factory=list)
    stream_sids: list[str] = msgspec.field(default_factory=list)
    #: Recognizer state per track (``connecting``, ``connected``, ``reconnecting``…).
    recognizers: dict[str, str] = msgspec.field(default_factory=dict)
    #: Per track: which recognizer transcribed which span live (the fallback's spans say so).
    served: dict[str, list[events.ServedSpan]] = msgspec.field(default_factory=dict)
    #: Per track: spans not transcribed live (the batch pass has them), with the reason.
    gaps: dict[str, list[events.LiveGap]] = msgspec.field(default_factory=dict)
    finals: int = 0
    #: Call time not carried by any stream (an instance died mid-call), in order.
    stream_gaps: list[StreamGap] = msgspec.field(default_factory=list)
    #: Twilio ``<Parameter>`` values of the stream.
    custom: dict[str, str] = msgspec.field(default_factory=dict)
    #: Every other field set with :meth:`CallRecords.update_call` (status callbacks and the like).
    extra: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status == "active"


def _float(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


_served_decoder = msgspec.json.Decoder(list[events.ServedSpan])
_gaps_decoder = msgspec.json.Decoder(list[events.LiveGap])
_stream_gaps_decoder = msgspec.json.Decoder(list[StreamGap])
_encoder = msgspec.json.Encoder()


def _decode(value: str, decoder: msgspec.json.Decoder[T]) -> T | None:
    """A JSON field of the call record, or ``None`` if it does not parse (never fail a read on it)."""
    try:
        return decoder.decode(value)
    except msgspec.MsgspecError:
        return None


def _call_info(call_sid: str, fields: dict[str, str], stream_sids: list[str]) -> CallInfo:
    info = CallInfo(
        call_sid=call_sid,
        status=fields.get(_F_STATUS, ""),
        started_at=_float(fields.get(_F_STARTED)),
        ended_at=_float(fields.get(_F_ENDED)),
        end_reason=fields.get(_F_REASON, ""),
        account_sid=fields.get(_F_ACCOUNT, ""),
        from_number=fields.get(_F_FROM, ""),
        to_number=fields.get(_F_TO, ""),
        finals=int(_float(fields.get(_F_FINALS))),
        stream_sids=stream_sids,
        stream_gaps=_decode(fields.get(F_STREAM_GAPS, "[]"), _stream_gaps_decoder) or [],
    )
    for name, value in sorted(fields.items()):
        if name in _KNOWN:
            continue
        if name.startswith(_TRACK_PREFIX):
            info.tracks.append(name[len(_TRACK_PREFIX) :])
        elif name.startswith(_RECOGNIZER_PREFIX):
            info.recognizers[name[len(_RECOGNIZER_PREFIX) :]] = value
        elif name.startswith(_SERVED_PREFIX) and (served := _decode(value, _served_decoder)) is not None:
            info.served[name[len(_SERVED_PREFIX) :]] = served
        elif name.startswith(_GAPS_PREFIX) and (gaps := _decode(value, _gaps_decoder)) is not None:
            info.gaps[name[len(_GAPS_PREFIX) :]] = gaps
        elif name.startswith(_CUSTOM_PREFIX):
            info.custom[name[len(_CUSTOM_PREFIX) :]] = value
        else:
            info.extra[name] = value
    info.tracks.sort(key=lambda t: (TRACK_ORDER.get(t, 9), t))
    return info


class CallRecords(StoreBase):
    """Call metadata and the call index. All methods raise redis errors when Redis is unreachable."""

    async def call_started(
        self,
        call_sid: str,
        *,
        stream_sid: str,
        tracks: list[str],
        started_at: float,
        account_sid: str = "",
        from_number: str = "",
        to_number: str = "",
        custom: dict[str, str] | None = None,
    ) -> None:
        """Record a call (or one more stream of it). An active call keeps its start time and finals."""
        k = self.keys
        key = k.call(call_sid)
        fields: dict[str, str] = {_F_STATUS: "active"}
        fields.update({_TRACK_PREFIX + t: "1" for t in tracks})
        if account_sid:
            fields[_F_ACCOUNT] = account_sid
        if from_number:
            fields[_F_FROM] = from_number
        if to_number:
            fields[_F_TO] = to_number
        for name, value in (custom or {}).items():
            fields[_CUSTOM_PREFIX + name] = value
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.exists(k.tombstone(call_sid))
            pipe.hsetnx(key, _F_STARTED, repr(float(started_at)))
            pipe.hset(key, mapping=as_mapping(fields))
            pipe.hdel(key, _F_ENDED, _F_REASON)
            if stream_sid:
                pipe.zadd(k.streams(call_sid), {stream_sid: started_at}, nx=True)
                pipe.sadd(k.live_streams(call_sid), stream_sid)
                pipe.hdel(key, "recovering")  # a stream runs again: a later loss may be recovered
            for name in k.call_keys(call_sid):
                pipe.persist(name)
            pipe.hget(key, _F_STARTED)
            pipe.hget(key, _F_FINALS)
            res = await pipe.execute()
        if res[0]:
            await self._undo_erased(call_sid)
            return
        # The index lives in another slot: its own transaction, after the record it points to.
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(k.recent_calls, call_sid)
            pipe.zadd(k.active_calls, {call_sid: started_at}, nx=True)
            await pipe.execute()
        first_start = _float(res[-2]) or started_at
        event = events.CallStarted(
            call_sid=call_sid,
            seq=int(_float(res[-1])),
            tracks=[t for t in tracks if t in TRACK_ORDER],  # type: ignore[misc]
            stream_sid=stream_sid,
            started_at=first_start,
            from_number=from_number,
            to_number=to_number,
        )
        await self._publish_call_event(event)

    @functools.cached_property
    def _update_call_script(self) -> AsyncScript:
        return self.client.register_script(_UPDATE_CALL)

    async def update_call(self, call_sid: str, fields: dict[str, str]) -> None:
        """Set metadata fields (status callbacks, ``recognizer.<track>`` states…); creates the record,
        with the retention TTL unless it is an active call."""
        if not fields:
            return
        args: list[str | int] = [max(1, int(self.retention_seconds))]
        for name, value in fields.items():
            args += [name, value]
        await self._update_call_script(keys=[self.keys.call(call_sid), self.keys.tombstone(call_sid)], args=args)

    async def resume_point(self, call_sid: str) -> tuple[float, float] | None:
        """(first start, call-clock second to continue at) of a call that streamed before, else ``None``.

        A call that ended continues where its audio (or its last final) stopped; one still marked
        active (its instance died) continues at the wall-clock time since it started.
        """
        k = self.keys
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hmget(k.call(call_sid), [_F_STARTED, _F_STATUS, _F_AUDIO_END])
            pipe.lindex(k.finals(call_sid), -1)
            (started, status, audio_end), last = await pipe.execute()
        started_at = _float(text(started) if started is not None else None)
        if not started_at:
            return None
        floor = _float(text(audio_end) if audio_end is not None else None)
        if last is not None:
            with contextlib.suppress(msgspec.MsgspecError):
                floor = max(floor, events.decode_final(last).end)
        if status is not None and text(status) == "active":
            floor = max(floor, time.time() - started_at)
        return started_at, round(floor, 3)

    async def set_recognizer_state(
        self,
        call_sid: str,
        track: str,
        state: str,
        *,
        served: list[events.ServedSpan] | None = None,
        gaps: list[events.LiveGap] | None = None,
    ) -> None:
        """A track's recognizer state, and (when given) its served spans and live gaps so far."""
        fields = {_RECOGNIZER_PREFIX + track: state}
        if served is not None:
            fields[_SERVED_PREFIX + track] = _encoder.encode(served).decode()
        if gaps is not None:
            fields[_GAPS_PREFIX + track] = _encoder.encode(gaps).decode()
        await self.update_call(call_sid, fields)

    async def call_ended(
        self, call_sid: str, *, ended_at: float, reason: str = "", audio_end: float | None = None
    ) -> None:
        """Move the call to the recent index, start its retention clock and tell subscribers."""
        k = self.keys
        ttl = max(1, int(self.retention_seconds))
        fields = {_F_STATUS: "ended", _F_ENDED: repr(float(ended_at)), _F_REASON: reason}
        if audio_end is not None:
            fields[_F_AUDIO_END] = repr(float(audio_end))
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.exists(k.tombstone(call_sid))
            pipe.hset(k.call(call_sid), mapping=as_mapping(fields))
            for name in k.call_keys(call_sid):
                pipe.expire(name, ttl)
            pipe.hmget(k.call(call_sid), [_F_STARTED, _F_FINALS])
            res = await pipe.execute()
        if res[0]:
            await self._undo_erased(call_sid)
            return
        async with self.client.pipeline(transaction=True) as pipe:  # the index: its own slot
            pipe.zrem(k.active_calls, call_sid)
            pipe.zadd(k.recent_calls, {call_sid: ended_at})
            pipe.zremrangebyscore(k.recent_calls, "-inf", f"({time.time() - ttl}")
            await pipe.execute()
        started, finals = res[-1]
        started_at = _float(started)
        event = events.CallEnded(
            call_sid=call_sid,
            seq=int(_float(finals)),
            ended_at=ended_at,
            duration=max(0.0, ended_at - started_at) if started_at else 0.0,
            reason=reason,
        )
        await self._publish_call_event(event)

    async def _undo_erased(self, call_sid: str) -> None:
        """A write found the call's tombstone in its own transaction (it ran after the erasure): take
        back what it created. Nothing else can have written the call since, so it all goes."""
        async with self.client.pipeline(transaction=True) as pipe:
            for name in self.keys.call_keys(call_sid):
                pipe.delete(name)
            await pipe.execute()
        logger.warning("write to an erased call refused", extra={"call_sid": call_sid})

    async def _publish_call_event(self, event: events.CallStarted | events.CallEnded) -> None:
        data = events.encode(event)
        # Not pipelined: redis-py's cluster pipeline refuses PUBLISH.
        await asyncio.gather(self.client.publish(self.keys.channel(event.call_sid), data),
                             self.client.publish(self.keys.calls_channel, data))  # fmt: skip

    async def get_call(self, call_sid: str) -> CallInfo | None:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.keys.call(call_sid))
            pipe.zrange(self.keys.streams(call_sid), 0, -1)
            raw, sids = await pipe.execute()
        if not raw:
            return None
        return _call_info(call_sid, text_dict(raw), [text(s) for s in sids])

    async def list_calls(self, *, active: bool | None = None, limit: int = 100) -> list[CallInfo]:
        """Calls, newest first: active ones (by start), then ended ones (by end)."""
        limit = max(0, limit)
        sids: list[str] = []
        if active is not False:
            sids += [text(s) for s in await self.client.zrevrange(self.keys.active_calls, 0, limit - 1)]
        if active is not True and len(sids) < limit:
            recent = await self.client.zrevrange(self.keys.recent_calls, 0, limit - len(sids) - 1)
            sids += [text(s) for s in recent]
        calls = []
        for sid in sids[:limit]:
            info = await self.get_call(sid)
            if info is not None:
                calls.append(info)
        return calls


__all__ = ["FINALS_FIELD", "F_STREAM_GAPS", "HANDOFF_FIELDS", "TRACK_ORDER", "CallInfo", "CallRecords", "StreamGap"]
