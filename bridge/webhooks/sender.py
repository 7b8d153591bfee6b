"""The sender: delivers the outbox's entries to their receivers, at least once.

It is a consumer of the outbox stream's group (``Keys.webhooks_group``) with the recording jobs'
guarantees (:class:`bridge.store.jobs.JobQueue`): an entry is acked only once its receiver answered
2xx; a failed attempt waits out a backoff (:mod:`bridge.retry`) and goes to the dead letters after
``BRIDGE_WEBHOOK_MAX_ATTEMPTS``; an entry left pending by a sender that died is claimed by another
after :data:`CLAIM_IDLE_MS`, and one in flight when its process stops is released at once. Each
attempt is signed afresh (:mod:`bridge.webhooks.signing`). The deliveries of an erased call are
dropped (they may carry transcript text, e.g. an ``alert``); a delivered entry is deleted from the
stream, and dead letters older than the retention are trimmed.

``bridge serve`` (every worker process) and ``bridge worker`` run one sender each (:func:`sending`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

import httpx
import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge

from bridge.retry import Backoff
from bridge.settings import Settings
from bridge.store import STORE_ERRORS, Store
from bridge.store.jobs import JobQueue
from bridge.webhooks import signing
from bridge.webhooks.events import Delivery

log = logging.getLogger(__name__)

#: An entry pending this long without its sender's ack is taken over (a sender that died).
CLAIM_IDLE_MS = 60_000
#: Seconds one delivery attempt may take (connect, send, answer).
ATTEMPT_TIMEOUT = 10.0
#: Deliveries one sender attempts at once.
LANES = 4


class WebhookMetrics:
    """Deliveries by result, and the outbox's backlog."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "bridge_webhook_deliveries_total",
            "Webhook delivery attempts by result (delivered, failed, dead, dropped: an erased call's)",
            ["result"], registry=registry,
        )  # fmt: skip
        self.backlog = Gauge(
            "bridge_webhook_backlog", "Webhook deliveries not done: queued (never read) or pending (in flight or "
            "waiting for a retry)", ["state"], registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.oldest = Gauge("bridge_webhook_backlog_oldest_seconds", "Age of the oldest delivery not done",
                            registry=registry, multiprocess_mode="livemax")  # fmt: skip
        self.dead = Gauge("bridge_webhook_dead_letters", "Webhook deliveries in the dead letters",
                          registry=registry, multiprocess_mode="livemax")  # fmt: skip


class WebhookSender:
    """One consumer of the outbox."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: WebhookMetrics,
        *,
        http: httpx.AsyncClient | None = None,
        block_ms: int = 1000,
        claim_idle_ms: int = CLAIM_IDLE_MS,
        backlog_interval_s: float = 15.0,
    ) -> None:
        self.store = store
        self.secret = settings.webhook_secret
        self.max_attempts = settings.webhook_max_attempts
        self.backoff = Backoff(base=settings.webhook_backoff_seconds, cap=600.0)
        self.metrics = metrics
        self.queue = JobQueue(store.client, store.keys, queue=store.keys.webhook_queue)
        self.consumer = f"{socket.gethostname()}:{os.getpid()}:webhooks"
        self.http = http
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.backlog_interval_s = backlog_interval_s

    async def run(self) -> None:
        """Deliver until cancelled, :data:`LANES` deliveries at a time (so one slow receiver does not
        hold up the others); an attempt in flight when cancelled is released for the next sender."""
        async with contextlib.AsyncExitStack() as stack:
            if self.http is None:
                self.http = await stack.enter_async_context(httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT))
            async with asyncio.TaskGroup() as lanes:  # cancelled: waits for every lane's release
                lanes.create_task(self._watch_backlog())
                for _ in range(LANES):
                    lanes.create_task(self._lane())

    async def _lane(self) -> None:
        failures = 0
        while True:
            try:
                await self.deliver_one()
                failures = 0
            except STORE_ERRORS as exc:
                log.warning("webhook sender: Redis error (%s); retrying", exc)
                await asyncio.sleep(Backoff(base=0.5, cap=10.0).delay(failures))
                failures += 1
            except Exception:  # a bug must not stop deliveries for good; the entry stays pending
                log.exception("webhook sender: unexpected error; retrying")
                await asyncio.sleep(Backoff(base=0.5, cap=10.0).delay(failures))
                failures += 1

    async def _watch_backlog(self) -> None:
        while True:
            try:
                await self.queue.trim_dead(time.time() - self.store.retention_seconds)  # personal data, too
                await self.refresh_backlog()
            except STORE_ERRORS as exc:
                log.warning("cannot measure the webhook backlog: %s", exc)
            await asyncio.sleep(self.backlog_interval_s)

    async def refresh_backlog(self) -> None:
        backlog = await self.queue.backlog()
        self.metrics.backlog.labels("queued").set(backlog.queued)
        self.metrics.backlog.labels("pending").set(backlog.pending)
        self.metrics.oldest.set(backlog.oldest_seconds)
        self.metrics.dead.set(backlog.dead)

    async def deliver_one(self) -> bool:
        """Take one delivery (a due retry, an abandoned one, a new one) and attempt it; ``False`` when
        nothing came within ``block_ms``."""
        got = await self.queue.next(self.consumer, block_ms=self.block_ms, claim_idle_ms=self.claim_idle_ms)
        if got is None:
            return False
        (entry_id, fields), _claimed = got
        try:
            delivery = Delivery.from_fields(fields)
        except msgspec.ValidationError as exc:
            await self._dead(entry_id, fields, f"malformed delivery: {exc}", 1)
            return True
        if await self.store.call_deleted(delivery.call_sid):
            await self.queue.discard(entry_id)
            self.metrics.deliveries.labels("dropped").inc()
            log.info("webhook %s %s dropped: the call was erased", delivery.type, delivery.event_id,
                     extra={"call_sid": delivery.call_sid})  # fmt: skip
            return True
        try:
            error = await self._attempt(delivery)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(entry_id, delivery.call_sid))
            raise
        if error is None:
            await self.queue.discard(entry_id)  # delivered: its body (an alert's text…) is not kept
            self.metrics.deliveries.labels("delivered").inc()
            log.info("webhook %s %s delivered to %s", delivery.type, delivery.event_id, delivery.url,
                     extra={"call_sid": delivery.call_sid})  # fmt: skip
            return True
        attempts = await self.queue.failed(entry_id)
        if attempts >= self.max_attempts:
            await self._dead(entry_id, fields, error, attempts)
            return True
        delay = self.backoff.delay(attempts - 1)
        await self.queue.retry_at(entry_id, time.time() + delay)
        self.metrics.deliveries.labels("failed").inc()
        log.warning("webhook %s %s to %s failed (attempt %d/%d, retry in %.1f s): %s", delivery.type,
                    delivery.event_id, delivery.url, attempts, self.max_attempts, delay, error,
                    extra={"call_sid": delivery.call_sid})  # fmt: skip
        return True

    async def _attempt(self, delivery: Delivery) -> str | None:
        """``None`` when the receiver took it (2xx), else why not."""
        assert self.http is not None
        body = delivery.body.encode()
        headers = signing.headers(self.secret, event_id=delivery.event_id, event_type=delivery.type,
                                  timestamp=int(time.time()), body=body)  # fmt: skip
        try:
            response = await self.http.post(delivery.url, content=body, headers=headers,
                                            timeout=ATTEMPT_TIMEOUT, follow_redirects=False)  # fmt: skip
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _release(self, entry_id: str, call_sid: str) -> None:
        """Stopping mid-attempt: hand the delivery to the next sender at once (not after the claim time)."""
        try:
            await self.queue.release(entry_id, self.consumer, idle_ms=self.claim_idle_ms)
            log.info("webhook delivery %s released", entry_id, extra={"call_sid": call_sid})
        except STORE_ERRORS as exc:
            log.warning("cannot release webhook delivery %s (%s): it is claimed after %d s", entry_id, exc,
                        self.claim_idle_ms // 1000, extra={"call_sid": call_sid})  # fmt: skip

    async def _dead(self, entry_id: str, fields: dict[str, str], reason: str, attempts: int) -> None:
        await self.queue.dead_letter(entry_id, fields, reason, attempts=attempts, consumer=self.consumer)
        self.metrics.deliveries.labels("dead").inc()
        log.error("webhook delivery %s dead-lettered after %d attempt(s): %s", entry_id, attempts, reason,
                  extra={"call_sid": fields.get("call_sid", "")})  # fmt: skip


@contextlib.asynccontextmanager
async def sending(store: Store, settings: Settings, registry: CollectorRegistry) -> AsyncIterator[None]:
    """A sender running in the background while the context lasts (none without receivers)."""
    if not settings.webhook_urls:
        yield
        return
    sender = WebhookSender(store, settings, WebhookMetrics(registry))
    await sender.queue.ensure_group()
    task = asyncio.create_task(sender.run(), name="webhook-sender")
    log.info("webhook sender %s delivering to %d receiver(s)", sender.consumer, len(settings.webhook_urls))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


__all__ = ["ATTEMPT_TIMEOUT", "CLAIM_IDLE_MS", "LANES", "WebhookMetrics", "WebhookSender", "sending"]
