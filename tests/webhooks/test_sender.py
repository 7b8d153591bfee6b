"""The outbox and its sender against a real Redis (and a Redis Cluster) and a real HTTP receiver: all four
event types are queued and delivered signed; a receiver that keeps failing sends a delivery to the
dead letters; an erased call's deliveries are dropped; a malformed entry never stops the sender."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from prometheus_client import CollectorRegistry

from bridge import events
from bridge.settings import Settings
from bridge.store import Store
from bridge.webhooks import EVENT_TYPES, BatchCompletedData, CallEndedData, WebhookEvent, WebhookOutbox, new_event_id
from bridge.webhooks.sender import WebhookMetrics, WebhookSender
from bridge.webhooks.signing import signature
from tests.support.nginx import free_port
from tests.support.receiver import WebhookReceiver

SID = "CA" + "ab" * 16
SECRET = "s3cret"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest, store: Store) -> Store:
    if request.param == "cluster":
        cluster_store: Store = request.getfixturevalue("cluster_store")
        return cluster_store
    return store


def _sender(store: Store, http: httpx.AsyncClient, *, max_attempts: int = 5) -> tuple[WebhookSender, WebhookMetrics]:
    settings = dataclasses.replace(Settings(), webhook_secret=SECRET, webhook_max_attempts=max_attempts,
                                   webhook_backoff_seconds=0.01)  # fmt: skip
    metrics = WebhookMetrics(CollectorRegistry())
    return WebhookSender(store, settings, metrics, http=http, block_ms=50), metrics


def _count(metrics: WebhookMetrics, result: str) -> float:
    return metrics.deliveries.labels(result)._value.get()


async def _deliver_all(sender: WebhookSender, *, rounds: int = 50) -> None:
    """Run the sender until it finds nothing to do (bounded)."""
    for _ in range(rounds):
        if not await sender.deliver_one():
            return
    raise AssertionError("the sender never ran out of work")


class Report(msgspec.Struct):
    passed: bool


async def test_all_four_event_types_are_delivered_signed_to_every_receiver(
    store: Store, http: httpx.AsyncClient
) -> None:
    async with WebhookReceiver(free_port()) as a, WebhookReceiver(free_port()) as b:
        outbox = WebhookOutbox(store, (a.url, b.url))
        alert = events.Alert(call_sid=SID, rule="r", track="inbound", text="t", start=0.0, end=1.0)
        ended = CallEndedData(started_at=1.0, ended_at=2.0, duration=1.0, reason="stop")
        batch = BatchCompletedData(engine="e", model="m", duration=1.0, utterances=2, wer=None, flagged=False)
        ids = [
            await outbox.enqueue("call.ended", SID, ended),
            await outbox.enqueue("batch.completed", SID, batch),
            await outbox.enqueue("compliance.failed", SID, Report(passed=False)),
            await outbox.enqueue("alert", SID, alert),
        ]
        sender, metrics = _sender(store, http)
        await sender.queue.ensure_group()
        await _deliver_all(sender)
        for receiver in (a, b):
            assert receiver.ids() == set(ids)
            for got in receiver.received:
                ts = int(got.headers["X-Bridge-Timestamp"])
                assert abs(ts - time.time()) < 60
                assert got.headers["X-Bridge-Signature"] == signature(SECRET, ts, got.body)
            decoded = [msgspec.json.decode(r.body, type=WebhookEvent) for r in receiver.received]
            assert sorted(e.type for e in decoded) == sorted(EVENT_TYPES)
        assert _count(metrics, "delivered") == 8
        backlog = await sender.queue.backlog()
        assert (backlog.queued, backlog.pending, backlog.dead) == (0, 0, 0)
        assert await store.client.xlen(store.keys.webhooks) == 0  # delivered bodies are not kept


async def test_no_receivers_queues_nothing(store: Store, http: httpx.AsyncClient) -> None:
    event_id = await WebhookOutbox(store, ()).enqueue("alert", SID, Report(passed=True))
    assert event_id.startswith("evt_")
    assert await store.client.exists(store.keys.webhooks) == 0


async def test_the_same_fact_keeps_its_event_id() -> None:
    assert new_event_id("batch:CA1:k") == new_event_id("batch:CA1:k") != new_event_id("batch:CA1:other")
    assert new_event_id() != new_event_id()


async def test_a_failing_receiver_gets_retries_then_a_dead_letter(store: Store, http: httpx.AsyncClient) -> None:
    async with WebhookReceiver(free_port(), fail=True) as receiver:
        await WebhookOutbox(store, (receiver.url,)).enqueue("alert", SID, Report(passed=False))
        sender, metrics = _sender(store, http, max_attempts=3)
        await sender.queue.ensure_group()
        for _ in range(200):  # bounded: the backoff is 10 ms
            await sender.deliver_one()
            if _count(metrics, "dead"):
                break
        assert len(receiver.received) == 3
        assert _count(metrics, "failed") == 2 and _count(metrics, "dead") == 1
        dead = await sender.queue.dead_letters()
        assert len(dead) == 1 and dead[0][1]["reason"] == "HTTP 500" and dead[0][1]["attempts"] == "3"
        backlog = await sender.queue.backlog()
        assert (backlog.queued, backlog.pending, backlog.dead) == (0, 0, 1)
        # Dead letters go once they are past the retention (here: a bound in the past keeps it, now does not).
        assert await sender.queue.trim_dead(time.time() - 3600) == 0
        assert await sender.queue.trim_dead(time.time() + 1) == 1 and await sender.queue.dead_letters() == []


async def test_an_erased_calls_deliveries_are_dropped(store: Store, http: httpx.AsyncClient) -> None:
    other = "CA" + "cd" * 16
    async with WebhookReceiver(free_port()) as receiver:
        outbox = WebhookOutbox(store, (receiver.url,))
        await outbox.enqueue("alert", SID, Report(passed=False))
        kept = await outbox.enqueue("alert", other, Report(passed=False))
        # Erased after the sender read it (a delete racing the delivery): dropped, and deleted from the stream.
        sender, metrics = _sender(store, http)
        await sender.queue.ensure_group()
        await store.client.set(store.keys.tombstone(SID), "1")
        await _deliver_all(sender)
        assert receiver.ids() == {kept}
        assert _count(metrics, "dropped") == 1
        assert await store.client.xlen(store.keys.webhooks) == 0  # the dropped one is deleted, not only acked


async def test_a_malformed_entry_goes_to_the_dead_letters(store: Store, http: httpx.AsyncClient) -> None:
    sender, metrics = _sender(store, http)
    await sender.queue.ensure_group()
    await sender.queue.add({"call_sid": SID, "type": "nonsense"})
    await _deliver_all(sender)
    assert _count(metrics, "dead") == 1
