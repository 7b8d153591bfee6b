"""``bridge compliance CALL_SID``: print a call's compliance report, read from Redis (``REDIS_URL``).

Exit status: 0 the report was printed (``passed`` says the verdict), 1 no report (yet), 2 bad
CallSid, no ``REDIS_URL`` or Redis unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import msgspec

from bridge.compliance import models
from bridge.settings import Settings
from bridge.sids import is_call_sid
from bridge.store import STORE_ERRORS, Store, client_from_url


async def _report(settings: Settings, call_sid: str) -> models.ComplianceReport | None:
    client = client_from_url(settings.redis_url, cluster=settings.redis_cluster)
    store = Store(client, prefix=settings.redis_prefix, retention_seconds=settings.retention_seconds,
                  url=settings.redis_url)  # fmt: skip
    try:
        return await store.compliance(call_sid)
    finally:
        await client.aclose()


def main(args: argparse.Namespace, settings: Settings) -> int:
    sid = args.call_sid
    if not is_call_sid(sid):
        print(f"bridge compliance: {sid[:64]!r} is not a CallSid (CA + 32 hex digits)", file=sys.stderr)
        return 2
    if not settings.redis_url:
        print("bridge compliance: REDIS_URL is not set (the Redis the bridge and its worker use)", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_report(settings, sid))
    except STORE_ERRORS as exc:
        print(f"bridge compliance: cannot read Redis: {exc}", file=sys.stderr)
        return 2
    if report is None:
        print(f"bridge compliance: no report for {sid} (the batch pass has not run)", file=sys.stderr)
        return 1
    print(msgspec.json.format(models.encode(report), indent=2).decode())
    return 0


__all__ = ["main"]
