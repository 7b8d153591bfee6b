"""What a webhook receiver gets: one JSON document per event, and the data of each event type.

The body is a :class:`WebhookEvent`; its ``data`` is the event type's own document, encoded by
whoever raised it (:class:`CallEndedData`, :class:`BatchCompletedData`, ``events.Alert`` for
``alert``, the compliance report for ``compliance.failed``). Receivers de-duplicate by ``id``:
delivery is at least once, and an event raised twice for the same fact (a batch job redelivered)
keeps its id.
"""

from __future__ import annotations

from typing import Literal

import msgspec

EventType = Literal["call.ended", "batch.completed", "compliance.failed", "alert"]
EVENT_TYPES: tuple[EventType, ...] = ("call.ended", "batch.completed", "compliance.failed", "alert")


class WebhookEvent(msgspec.Struct, kw_only=True, frozen=True):
    """The JSON body of every delivery."""

    #: Unique per event (``evt_`` + 32 hex digits); the same on every attempt and every receiver.
    id: str
    type: EventType
    #: Unix time the event was raised (not the delivery attempt: see ``X-Bridge-Timestamp``).
    created_at: float
    call_sid: str
    data: msgspec.Raw


class CallEndedData(msgspec.Struct, kw_only=True, frozen=True):
    """``call.ended``: the call's last stream stopped (times in unix seconds)."""

    started_at: float
    ended_at: float
    duration: float
    reason: str


class BatchCompletedData(msgspec.Struct, kw_only=True, frozen=True):
    """``batch.completed``: the compliance transcript is stored (fetch it with ``?source=batch``)."""

    engine: str
    model: str
    duration: float
    utterances: int
    #: Live-vs-batch word error rate (``None``: no live transcript to judge), and whether it is flagged.
    wer: float | None
    flagged: bool


class Delivery(msgspec.Struct, kw_only=True, frozen=True):
    """One entry of the outbox stream: an event for one receiver (flat string fields)."""

    event_id: str
    type: EventType
    call_sid: str
    url: str
    #: The JSON body, exactly as it is signed and sent.
    body: str

    def to_fields(self) -> dict[str, str]:
        return {"event_id": self.event_id, "type": self.type, "call_sid": self.call_sid, "url": self.url,
                "body": self.body}  # fmt: skip

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Delivery:
        """Raises ``msgspec.ValidationError`` on a malformed entry."""
        return msgspec.convert(fields, cls)


__all__ = ["EVENT_TYPES", "BatchCompletedData", "CallEndedData", "Delivery", "EventType", "WebhookEvent"]
