"""The outbox: raising an event queues one delivery per receiver in a Redis stream (``{webhooks}``).

Queuing is all a caller waits for: the sender (:mod:`bridge.webhooks.sender`) delivers from the stream
at least once, so a receiver that is down or a bridge that restarts loses nothing. Every delivery
of one event is added in one transaction (one slot), so an event reaches all receivers or none.
"""

from __future__ import annotations

import time
import uuid

import msgspec

from bridge.store import Store
from bridge.store.jobs import JobQueue
from bridge.webhooks.events import Delivery, EventType, WebhookEvent

_encoder = msgspec.json.Encoder()


def new_event_id(key: str | None = None) -> str:
    """A random event id, or (with ``key``) the same id every time for the same fact."""
    value = uuid.uuid5(uuid.NAMESPACE_URL, key) if key is not None else uuid.uuid4()
    return "evt_" + value.hex


class WebhookOutbox:
    """``enqueue`` an event for every configured receiver (nothing when there is none)."""

    def __init__(self, store: Store, urls: tuple[str, ...], *, maxlen: int = 100_000) -> None:
        self.store = store
        self.urls = urls
        self.queue = JobQueue(store.client, store.keys, maxlen=maxlen, queue=store.keys.webhook_queue)

    async def enqueue(self, event_type: EventType, call_sid: str, data: msgspec.Struct, *,
                      event_id: str | None = None) -> str:  # fmt: skip
        """Queue ``data`` (the event type's document) for every receiver; returns the event's id.

        ``event_id``: the id of an event that may be raised twice for the same fact (see
        :func:`new_event_id`), so receivers see one event. Raises the store's errors.
        """
        event = WebhookEvent(id=event_id or new_event_id(), type=event_type, created_at=time.time(),
                             call_sid=call_sid, data=msgspec.Raw(_encoder.encode(data)))  # fmt: skip
        if not self.urls:
            return event.id
        body = _encoder.encode(event).decode()
        deliveries = [Delivery(event_id=event.id, type=event_type, call_sid=call_sid, url=url, body=body)
                      for url in self.urls]  # fmt: skip
        await self.queue.add_all([d.to_fields() for d in deliveries])
        return event.id


__all__ = ["WebhookOutbox", "new_event_id"]
