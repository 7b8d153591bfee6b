"""A live alert raised on a real Redis is queued as the ``alert`` webhook, with one event id per rule and
final (a retried write queues it again under the same id: receivers see one event)."""

from __future__ import annotations

import msgspec

from bridge import events
from bridge.compliance.alerts import raise_alert
from bridge.store import Store
from bridge.webhooks import WebhookEvent, WebhookOutbox

SID = "CA" + "a9" * 16


async def _queued(store: Store) -> list[WebhookEvent]:
    entries = await store.client.xrange(store.keys.webhooks)
    return [msgspec.json.decode(f[b"body"], type=WebhookEvent) for _id, f in entries]


async def test_an_alert_is_queued_as_a_webhook_with_one_id(store: Store) -> None:
    outbox = WebhookOutbox(store, ("http://127.0.0.1:9/hook",))
    final = events.Final(call_sid=SID, id=events.final_id("inbound", 2.0), track="inbound", start=2.0, end=3.0,
                         text="get me a supervisor")  # fmt: skip
    await store.add_final(final)
    alert = events.Alert(call_sid=SID, rule="supervisor", track="inbound", text=final.text, start=2.0, end=3.0,
                         final_id=final.id)  # fmt: skip
    assert await raise_alert(store, alert, outbox) is True
    assert await raise_alert(store, alert, outbox) is False  # a retried write: not raised again…
    queued = await _queued(store)
    assert [e.type for e in queued] == ["alert", "alert"] and queued[0].id == queued[1].id  # …one event
    data = msgspec.json.decode(queued[0].data, type=events.Alert)
    assert (data.rule, data.final_id, data.text) == ("supervisor", final.id, "get me a supervisor")
    assert await raise_alert(store, alert) is False  # no outbox (no receivers): nothing queued
    assert len(await _queued(store)) == 2
