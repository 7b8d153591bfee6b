"""Signed event webhooks: ``call.ended``, ``batch.completed``, ``compliance.failed`` and ``alert``.

Raising an event is :meth:`WebhookOutbox.enqueue` (a Redis stream, :mod:`~bridge.webhooks.outbox`);
the sender (:mod:`~bridge.webhooks.sender`) delivers it to every ``BRIDGE_WEBHOOK_URLS`` at least once,
signed (:mod:`~bridge.webhooks.signing`). Documents: :mod:`~bridge.webhooks.events`. Operators:
docs/retention-and-webhooks.md.
"""

from __future__ import annotations

from bridge.webhooks.events import EVENT_TYPES, BatchCompletedData, CallEndedData, EventType, WebhookEvent
from bridge.webhooks.outbox import WebhookOutbox, new_event_id

__all__ = ["EVENT_TYPES", "BatchCompletedData", "CallEndedData", "EventType", "WebhookEvent", "WebhookOutbox",
           "new_event_id"]  # fmt: skip
