"""The signature of a delivery: HMAC-SHA256 over ``timestamp + "." + body`` with the shared secret.

Headers of every delivery: ``X-Bridge-Event-Id`` (the event's id), ``X-Bridge-Event-Type``,
``X-Bridge-Timestamp`` (unix seconds of this attempt), ``X-Bridge-Signature: v1=<hex>``. Signing the
timestamp with the body lets a receiver refuse a replayed old request; ``v1=`` leaves room for a
second scheme (or a second secret during rotation) without breaking receivers.
"""

from __future__ import annotations

import hashlib
import hmac

ID_HEADER = "X-Bridge-Event-Id"
TYPE_HEADER = "X-Bridge-Event-Type"
TIMESTAMP_HEADER = "X-Bridge-Timestamp"
SIGNATURE_HEADER = "X-Bridge-Signature"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex>`` for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def headers(secret: str, *, event_id: str, event_type: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one delivery attempt."""
    return {
        "Content-Type": "application/json",
        ID_HEADER: event_id,
        TYPE_HEADER: event_type,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


__all__ = ["ID_HEADER", "SIGNATURE_HEADER", "TIMESTAMP_HEADER", "TYPE_HEADER", "headers", "signature"]
