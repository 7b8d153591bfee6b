"""Compliance data of calls: live alerts (stored once per rule and final, published like a final)
and the batch pass's compliance reports with their two indexes (all reports, failed reports).

An alert is stored and published in one Lua step, with the ``seq`` of the final it is about, so a
subscriber that resumes after final ``n`` gets the alerts of finals after ``n`` (see
:mod:`bridge.live.hub`). The report and its indexes live in two cluster slots: the indexes are
written first (they are only pointers; a reader skips a pointer whose report is gone).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import msgspec
from redis.commands.core import AsyncScript

from bridge import events
from bridge.compliance import models
from bridge.compliance.models import ComplianceReport
from bridge.store.client import text
from bridge.store.deletion import CallDeletion

logger = logging.getLogger(__name__)

# KEYS: alerts, final_ids, call, tombstone (one call: one slot). ARGV: field, alert JSON without seq,
# final id, channel. Returns 1 when stored and published, nil when this rule already alerted on this
# final or the call was erased.
_ADD_ALERT = """
if redis.call('EXISTS', KEYS[4]) == 1 or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return false
end
local seq = tonumber(redis.call('HGET', KEYS[2], ARGV[3]) or '0')
local doc = ARGV[2]
if seq and seq > 0 then
  doc = string.sub(ARGV[2], 1, -2) .. ',"seq":' .. seq .. '}'
end
redis.call('HSET', KEYS[1], ARGV[1], doc)
local ttl = redis.call('TTL', KEYS[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
redis.call('PUBLISH', ARGV[4], doc)
return 1
"""

_alert_decoder = msgspec.json.Decoder(events.Alert)


def alert_order(alert: events.Alert) -> tuple[int, float, str]:
    return (alert.seq, alert.start, alert.rule)


class ComplianceLog(CallDeletion):
    """Alerts and compliance reports."""

    @functools.cached_property
    def _add_alert_script(self) -> AsyncScript:
        return self.client.register_script(_ADD_ALERT)

    async def add_alert(self, alert: events.Alert) -> bool:
        """Store and publish an alert once per (final, rule); ``False`` when it was already raised."""
        k, sid = self.keys, alert.call_sid
        doc = events.encode(msgspec.structs.replace(alert, seq=0))
        result = await self._add_alert_script(
            keys=[k.alerts(sid), k.final_ids(sid), k.call(sid), k.tombstone(sid)],
            args=[f"{alert.final_id}|{alert.rule}", doc, alert.final_id, k.channel(sid)],
        )  # fmt: skip
        return result is not None

    async def alerts(self, call_sid: str) -> list[events.Alert]:
        """The call's live alerts, in the order of their finals."""
        raw: dict[Any, Any] = await self.client.hgetall(self.keys.alerts(call_sid))
        out: list[events.Alert] = []
        for doc in raw.values():
            try:
                out.append(_alert_decoder.decode(doc))
            except (msgspec.DecodeError, msgspec.ValidationError):
                logger.error("a stored alert is unreadable", extra={"call_sid": call_sid})
        return sorted(out, key=alert_order)

    async def save_compliance(self, report: ComplianceReport) -> bool:
        """Store a call's report (overwritten as a whole) with the call's retention, and index it;
        ``False`` when the call was erased (nothing stored, nor indexed)."""
        sid, k = report.call_sid, self.keys
        retention = max(1, int(self.retention_seconds))
        ttl = int(await self.client.ttl(k.call(sid)))
        ttl = ttl if ttl > 0 else retention
        horizon = f"({time.time() - retention}"
        async with self.client.pipeline(transaction=True) as tx:
            tx.zadd(k.compliance_calls, {sid: report.evaluated_at})
            if report.passed:
                tx.zrem(k.compliance_failed, sid)
            else:
                tx.zadd(k.compliance_failed, {sid: report.evaluated_at})
            tx.zremrangebyscore(k.compliance_calls, "-inf", horizon)
            tx.zremrangebyscore(k.compliance_failed, "-inf", horizon)
            await tx.execute()
        if await self.set_call_documents(sid, {k.compliance(sid): models.encode(report)}, ttl):
            return True
        async with self.client.pipeline(transaction=True) as tx:
            tx.zrem(k.compliance_calls, sid)
            tx.zrem(k.compliance_failed, sid)
            await tx.execute()
        logger.warning("compliance report of an erased call discarded", extra={"call_sid": sid})
        return False

    async def compliance(self, call_sid: str) -> ComplianceReport | None:
        """The call's compliance report, or ``None`` before the batch pass made one."""
        raw = await self.client.get(self.keys.compliance(call_sid))
        if raw is None:
            return None
        try:
            return models.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            logger.error("stored compliance report is unreadable", extra={"call_sid": call_sid})
            return None

    async def compliance_calls(self, *, failed: bool = False, limit: int = 100) -> list[str]:
        """CallSids with a report (only failed ones with ``failed``), newest first."""
        key = self.keys.compliance_failed if failed else self.keys.compliance_calls
        rows = await self.client.zrevrange(key, 0, max(0, limit - 1))
        return [text(r) for r in rows]


__all__ = ["ComplianceLog", "alert_order"]
