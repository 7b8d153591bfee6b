"""Signed webhooks through real ``bridge serve`` processes (issue #13): every event reaches a real receiver
at least once, de-duplicated by its id, across a restart of the bridge with deliveries pending, and
each delivery verifies with the snippet of docs/retention-and-webhooks.md."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from bridge import events
from bridge.store import Store, client_from_url
from bridge.store.jobs import JobQueue
from bridge.testing import ScriptedDeepgramServer, TwilioStream
from bridge.webhooks import EVENT_TYPES, BatchCompletedData, WebhookEvent, WebhookOutbox
from bridge.webhooks.sender import CLAIM_IDLE_MS
from tests.support.bridges import TWILIO_TOKEN, BridgeProcess, bridge_env, metric, worker_process
from tests.support.calls import poll, send, speech
from tests.support.nginx import free_port
from tests.support.receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
SECRET = "webhook-secret-for-the-test"
SID = "CA" + "c0" * 16


class ComplianceFailed(msgspec.Struct):
    """A stand-in for the compliance report (its own branch defines the real one)."""

    failed_rules: list[str]


def documented_verify() -> Callable[[str, dict[str, str], bytes], bool]:
    """The verification snippet of the docs, run as a receiver would run it."""
    doc = (ROOT / "docs" / "retention-and-webhooks.md").read_text()
    section = doc[doc.index("### Verifying a delivery") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(compile(code.group(1), "retention-and-webhooks.md", "exec"), namespace)
    verify: Callable[[str, dict[str, str], bytes], bool] = namespace["verify"]
    return verify


async def test_every_event_reaches_the_receiver_across_a_bridge_restart(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    port = free_port()  # the receiver's: nobody listens there until the first bridge has stopped
    receiver = WebhookReceiver(port)
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_WEBHOOK_URLS=receiver.url,
                     BRIDGE_WEBHOOK_SECRET=SECRET, BRIDGE_WEBHOOK_BACKOFF_SECONDS="0.2",
                     BRIDGE_WEBHOOK_MAX_ATTEMPTS="1000")  # fmt: skip
    store = Store(client_from_url(redis_url), prefix=redis_prefix, retention_seconds=3600)
    outbox = WebhookOutbox(store, (receiver.url,))
    queue = JobQueue(store.client, store.keys, queue=store.keys.webhook_queue)
    raised: dict[str, str] = {}
    try:
        async with BridgeProcess(tmp_path / "first", env) as first:
            async with TwilioStream(f"{first.ws}/twilio/media", SID, auth_token=TWILIO_TOKEN) as stream:
                await send(stream, speech(1.0, 3))
                await stream.stop()
            batch = BatchCompletedData(engine="whisper", model="base", duration=1.0, utterances=1, wer=0.1,
                                       flagged=False)  # fmt: skip
            alert = events.Alert(call_sid=SID, rule="no-card-numbers", track="inbound", text="[redacted]",
                                 start=0.5, end=1.0, final_id="inbound-500")  # fmt: skip
            raised["batch.completed"] = await outbox.enqueue("batch.completed", SID, batch)
            raised["alert"] = await outbox.enqueue("alert", SID, alert)
            raised["compliance.failed"] = await outbox.enqueue("compliance.failed", SID, ComplianceFailed(["r1"]))

            async def every_event_failed_once() -> bool:
                return await first.metric("bridge_webhook_deliveries_total", result="failed") >= 4

            await poll(every_event_failed_once, "a failed attempt of each of the 4 deliveries")
        assert first.exit_code == 0
        backlog = await queue.backlog()
        assert backlog.queued + backlog.pending == 4 and backlog.dead == 0  # nothing lost, nothing done

        async with receiver, BridgeProcess(tmp_path / "second", env) as second:

            async def all_delivered() -> bool:
                return len(receiver.ids()) >= 4

            await poll(all_delivered, "every event at the receiver", seconds=30)
            assert await second.metric("bridge_webhook_deliveries_total", result="delivered") >= 4

            async def drained() -> bool:
                b = await queue.backlog()
                return b.queued + b.pending == 0

            await poll(drained, "the outbox to drain")

        verify = documented_verify()
        by_id: dict[str, WebhookEvent] = {}
        for request in receiver.received:  # at least once: de-duplicate by id
            assert request.path == "/hook"
            assert verify(SECRET, request.headers, request.body)
            assert not verify("another-secret", request.headers, request.body)
            assert not verify(SECRET, request.headers, request.body + b" ")
            event = msgspec.json.decode(request.body, type=WebhookEvent)
            assert request.headers["X-Bridge-Event-Id"] == event.id
            assert request.headers["X-Bridge-Event-Type"] == event.type
            by_id[event.id] = event
        assert sorted(e.type for e in by_id.values()) == sorted(EVENT_TYPES)
        assert all(e.call_sid == SID for e in by_id.values())
        for event_type, event_id in raised.items():
            assert by_id[event_id].type == event_type
        ended = next(e for e in by_id.values() if e.type == "call.ended")
        assert msgspec.json.decode(ended.data)["reason"] == "twilio stop"
        assert msgspec.json.decode(by_id[raised["alert"]].data)["rule"] == "no-card-numbers"
    finally:
        receiver.stop()
        keys = [k async for k in store.client.scan_iter(match=store.keys.pattern(), count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.client.aclose()


async def test_a_delivery_in_flight_when_the_bridge_stops_is_delivered_by_the_next_one(
    redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    """A slow receiver: the stopping bridge hands its delivery back at once (not after the 60 s claim)."""
    receiver = WebhookReceiver(free_port())
    receiver.release.clear()  # every request hangs until released
    env = bridge_env(redis_url, redis_prefix, scripted.url, BRIDGE_WEBHOOK_URLS=receiver.url,
                     BRIDGE_WEBHOOK_SECRET=SECRET)  # fmt: skip
    store = Store(client_from_url(redis_url), prefix=redis_prefix, retention_seconds=3600)
    try:
        async with receiver:
            async with BridgeProcess(tmp_path / "first", env) as first:
                event_id = await WebhookOutbox(store, (receiver.url,)).enqueue(
                    "compliance.failed", SID, ComplianceFailed(["r2"])
                )

                async def in_flight() -> bool:
                    return receiver.arrived >= 1

                await poll(in_flight, "the first attempt to reach the receiver")
                assert await first.metric("bridge_webhook_deliveries_total", result="delivered") == 0
            assert first.exit_code == 0
            # Handed back: still pending (not acked), but idle as long as a dead sender's, so claimable now.
            q = store.keys.webhook_queue
            (pending,) = await store.client.xpending_range(q.stream, q.group, "-", "+", 10)
            assert pending["time_since_delivered"] >= CLAIM_IDLE_MS
            receiver.release.set()  # the receiver is back to answering at once
            async with BridgeProcess(tmp_path / "second", env) as second:

                async def delivered() -> bool:
                    return await second.metric("bridge_webhook_deliveries_total", result="delivered") >= 1

                await poll(delivered, "the delivery by the second bridge", seconds=30)
        assert receiver.ids() == {event_id}  # once or twice: the receiver de-duplicates by id
        assert all(documented_verify()(SECRET, r.headers, r.body) for r in receiver.received)
    finally:
        receiver.stop()
        keys = [k async for k in store.client.scan_iter(match=store.keys.pattern(), count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.client.aclose()


async def test_bridge_worker_delivers_webhooks_and_exports_their_metrics(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """``bridge worker`` runs a sender too (a deployment may raise events where no bridge serves)."""
    env = {"REDIS_URL": redis_url, "BRIDGE_REDIS_PREFIX": redis_prefix, "BRIDGE_WEBHOOK_SECRET": SECRET,
           "BRIDGE_RECORDING_DIR": str(tmp_path / "recordings")}  # fmt: skip
    store = Store(client_from_url(redis_url), prefix=redis_prefix, retention_seconds=3600)
    try:
        async with WebhookReceiver(free_port()) as receiver:
            env["BRIDGE_WEBHOOK_URLS"] = receiver.url
            nowhere = f"http://127.0.0.1:{free_port()}"
            async with worker_process(tmp_path / "worker", env, "--engine", "deepgram", "--base-url", nowhere) as w:
                event_id = await WebhookOutbox(store, (receiver.url,)).enqueue("alert", SID, ComplianceFailed([]))

                async def delivered() -> bool:
                    return metric(await w.metrics(), "bridge_webhook_deliveries_total", result="delivered") == 1

                await poll(delivered, "the worker's delivery")
                assert receiver.ids() == {event_id}
                page = await w.metrics()
                assert metric(page, "bridge_webhook_dead_letters") == 0
                assert "bridge_webhook_backlog" in page
    finally:
        keys = [k async for k in store.client.scan_iter(match=store.keys.pattern(), count=500)]
        if keys:
            await store.client.delete(*keys)
        await store.client.aclose()
