"""The fan-out hub: one Redis pub/sub connection per process, shared by every local subscriber.

A call's channel is subscribed on its first local subscriber and unsubscribed after its last. A
:class:`Subscription` first reads the finals so far from the store (the snapshot), having subscribed
*before* reading, then yields live events, skipping every final whose ``seq`` it has already sent,
so nothing falls between the two. Each subscriber has a bounded queue; one that falls behind is
dropped without slowing anyone else. If the pub/sub connection drops, the hub reconnects by itself
and every subscriber re-reads the finals it may have missed from the store.

Compliance alerts (``alert`` events) carry the ``seq`` of the final they are about and are stored
too: the snapshot and every catch-up send each final's alerts right after it, and a subscriber gets
each alert once (by final id and rule), and none about finals at or before its resume position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import redis.exceptions

from bridge import events
from bridge.retry import Backoff
from bridge.settings import Settings
from bridge.store import UNAVAILABLE, Client, Store, pubsub_of

logger = logging.getLogger(__name__)

TOO_SLOW_REASON = "subscriber too slow"


class HubUnavailable(RuntimeError):
    """The hub could not subscribe to the call's channel (Redis unreachable or hub stopped)."""


class SubscriberTooSlow(RuntimeError):
    """This subscriber's queue overflowed; it has been dropped."""


class _Resync:
    """Queue marker: the pub/sub connection was re-established; re-read missed finals."""


class _Stop:
    """Queue marker: the hub is stopping."""


_RESYNC = _Resync()
_STOP = _Stop()


class Delivery:
    """A live event with its wire forms, built once however many subscribers send it (a final on a
    call with a hundred dashboards is decoded once and sent a hundred times, never re-encoded)."""

    __slots__ = ("_sse", "_text", "data", "event")

    def __init__(self, event: events.LiveEvent, data: bytes | None = None) -> None:
        self.event = event
        #: The event's JSON: as published (live), or encoded here (snapshot and catch-up).
        self.data = events.encode(event) if data is None else data
        self._text: str | None = None
        self._sse: bytes | None = None

    @property
    def text(self) -> str:
        """The JSON as a WebSocket text frame's payload."""
        if self._text is None:
            self._text = self.data.decode()
        return self._text

    @property
    def sse(self) -> bytes:
        """One Server-Sent Event: ``id`` (finals only), ``event`` and ``data`` lines."""
        if self._sse is None:
            event = self.event
            head = f"id: {event.seq}\n" if isinstance(event, events.Final) else ""
            self._sse = f"{head}event: {event_type(event)}\n".encode() + b"data: " + self.data + b"\n\n"
        return self._sse
#: ``RedisClusterException``: a cluster client that cannot reach any node to learn the slots.
_READER_ERRORS: tuple[type[BaseException], ...] = (
    *UNAVAILABLE, redis.exceptions.RedisError, redis.exceptions.RedisClusterException, RuntimeError
)
_SUBSCRIBE_ERRORS: tuple[type[BaseException], ...] = (HubUnavailable, *UNAVAILABLE)
_Item = Delivery | _Resync | _Stop


def event_type(event: events.LiveEvent) -> str:
    """The wire ``type`` of an event (``final``, ``partial``…)."""
    return str(type(event).__struct_config__.tag)


class Subscription:
    """One local subscriber of one call: use as ``async with hub.subscribe(sid) as sub``.

    Iterating yields the snapshot (finals with ``seq > after``) and then live events, each final
    exactly once and in seq order; it ends after ``call_ended`` or when the hub stops, and raises
    :class:`SubscriberTooSlow` once the subscriber has been dropped.
    """

    def __init__(self, hub: Hub, call_sid: str, after: int, maxsize: int) -> None:
        self.hub = hub
        self.call_sid = call_sid
        #: Highest final seq delivered so far.
        self.last_seq = max(0, after)
        #: Where the subscriber resumed: alerts of finals up to here are not sent again.
        self.after = self.last_seq
        self._alerts_sent: set[str] = set()
        self.queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=maxsize)
        #: Set when the subscriber is dropped for being too slow.
        self.dropped = asyncio.Event()
        self._resync_pending = False

    async def __aenter__(self) -> Subscription:
        await self.hub._add(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.hub._remove(self)

    def _offer(self, item: _Item) -> bool:
        """Queue an item without waiting; False when the queue is full."""
        if self.dropped.is_set():
            return True
        if isinstance(item, _Resync):
            if self._resync_pending:
                return True
            self._resync_pending = True
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def _drop(self) -> None:
        self.dropped.set()
        # Free the memory now; the iterator notices ``dropped`` before it reads again.
        while not self.queue.empty():
            self.queue.get_nowait()

    def __aiter__(self) -> AsyncIterator[events.LiveEvent]:
        return self._plain()

    async def _plain(self) -> AsyncIterator[events.LiveEvent]:
        async for delivery in self._events():
            yield delivery.event

    def deliveries(self) -> AsyncIterator[Delivery]:
        """Like iterating, with each event's wire forms (what the endpoints send)."""
        return self._events()

    def _new_alert(self, alert: events.Alert) -> bool:
        """True the first time an alert is seen, unless it is about a final before the resume position."""
        key = f"{alert.final_id}|{alert.rule}"
        if key in self._alerts_sent or 0 < alert.seq <= self.after:
            return False
        self._alerts_sent.add(key)
        return True

    async def _catch_up(self, up_to: int | None = None) -> AsyncIterator[Delivery]:
        """Finals after :attr:`last_seq` from the store (the snapshot, or what a gap lost), each
        followed by its alerts; then stored alerts of earlier finals not sent yet (lost live)."""
        store = self.hub.store
        finals = await store.finals(self.call_sid, after_seq=self.last_seq)
        by_seq: dict[int, list[events.Alert]] = {}
        for alert in await store.alerts(self.call_sid):
            by_seq.setdefault(alert.seq, []).append(alert)
        for final in finals:
            if up_to is not None and final.seq > up_to:
                break
            if final.seq > self.last_seq:
                self.last_seq = final.seq
                yield Delivery(final)
                for alert in by_seq.pop(final.seq, ()):
                    if self._new_alert(alert):
                        yield Delivery(alert)
        for seq in sorted(s for s in by_seq if 0 < s <= self.last_seq):
            for alert in by_seq[seq]:
                if self._new_alert(alert):
                    yield Delivery(alert)

    async def _ended(self) -> events.CallEnded | None:
        info = await self.hub.store.get_call(self.call_sid)
        if info is None or info.status != "ended":
            return None
        return events.CallEnded(
            call_sid=self.call_sid,
            seq=max(self.last_seq, info.finals),
            ended_at=info.ended_at,
            duration=max(0.0, info.ended_at - info.started_at) if info.started_at else 0.0,
            reason=info.end_reason,
        )

    async def _from_store(self) -> AsyncIterator[Delivery]:
        """The finals not yet delivered, then ``call_ended`` if the call is over."""
        async for final in self._catch_up():
            yield final
        ended = await self._ended()
        if ended is not None:
            yield Delivery(ended)

    async def _events(self) -> AsyncIterator[Delivery]:
        async for delivery in self._from_store():
            yield delivery
            if isinstance(delivery.event, events.CallEnded):
                return
        while True:
            if self.dropped.is_set():
                raise SubscriberTooSlow(TOO_SLOW_REASON)
            item = await self.queue.get()
            if self.dropped.is_set():
                raise SubscriberTooSlow(TOO_SLOW_REASON)
            if isinstance(item, _Stop):
                return
            if isinstance(item, _Resync):
                self._resync_pending = False
                async for delivery in self._from_store():
                    yield delivery
                    if isinstance(delivery.event, events.CallEnded):
                        return
                continue
            event = item.event
            if isinstance(event, events.Final):
                if event.seq <= self.last_seq:
                    continue  # already sent with the snapshot
                if event.seq > self.last_seq + 1:  # a gap: fetch what is missing first
                    async for final in self._catch_up(up_to=event.seq - 1):
                        yield final
                self.last_seq = event.seq
            elif isinstance(event, events.Alert):
                if event.seq > self.last_seq:
                    # The alert overtook its final (published before this subscription was live, or
                    # through another cluster node): send the final first, with the stored alerts.
                    async for final in self._catch_up(up_to=event.seq):
                        yield final
                if not self._new_alert(event):
                    continue  # sent with the snapshot or the catch-up, or before the resume position
            elif isinstance(event, events.CallEnded) and event.seq > self.last_seq:
                # On a Redis Cluster the call's finals and its end are published through different
                # nodes, so the end can overtake them: its seq says how many there are; read the rest.
                async for final in self._catch_up(up_to=event.seq):
                    yield final
            yield item
            if isinstance(event, events.CallEnded):
                return


class _Channel:
    def __init__(self) -> None:
        self.subscribers: set[Subscription] = set()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        #: SUBSCRIBE commands sent whose confirmation has not been read yet.
        self.pending = 0


class Hub:
    """One Redis pub/sub connection shared by every local subscriber of this process."""

    def __init__(
        self,
        store: Store,
        settings: Settings | None = None,
        *,
        queue_size: int | None = None,
        subscribe_timeout: float = 5.0,
        backoff: Backoff = Backoff(base=0.05, cap=5.0),
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.queue_size = queue_size or (settings.subscriber_queue if settings else 1000)
        self.subscribe_timeout = subscribe_timeout
        self.backoff = backoff
        #: Called with the call sid whenever a subscriber is dropped (e.g. a Prometheus counter).
        self.on_drop = on_drop
        #: Subscribers dropped for being too slow since start.
        self.dropped_total = 0
        #: Times the pub/sub connection was re-established after a failure.
        self.reconnects = 0
        self._channels: dict[str, _Channel] = {}
        self._client: Client | None = None
        self._pubsub: Any = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def subscriber_count(self) -> int:
        return sum(len(c.subscribers) for c in self._channels.values())

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    def subscribe(self, call_sid: str, *, after: int = 0) -> Subscription:
        """A subscription to ``call_sid`` resuming after final ``after`` (enter it with ``async with``)."""
        return Subscription(self, call_sid, after, self.queue_size)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.settings is not None and not self.settings.subscriber_secret:
            logger.warning(
                "BRIDGE_SUBSCRIBER_SECRET is not set: live and call endpoints are open to anyone"
            )
        # A connection of our own that surfaces failures at once (no silent reconnect that would lose
        # messages without us knowing to resync).
        self._client = self.store.dedicated_client("fanout-hub")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="fanout-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_pubsub()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        for channel in self._channels.values():
            if not channel.ready.done():
                channel.ready.set_exception(HubUnavailable("hub stopped"))
                channel.ready.exception()  # mark retrieved
            for sub in channel.subscribers:
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(_STOP)
        self._channels.clear()

    # -- subscriber bookkeeping ----------------------------------------------------------------

    async def _add(self, sub: Subscription) -> None:
        if self._task is None:
            raise HubUnavailable("hub not started")
        name = self.store.keys.channel(sub.call_sid)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
            channel.subscribers.add(sub)
            if self._connected.is_set():
                await self._send_subscribe(name, channel)
        else:
            channel.subscribers.add(sub)
        try:
            async with asyncio.timeout(self.subscribe_timeout):
                await asyncio.shield(channel.ready)
        except (TimeoutError, HubUnavailable) as exc:
            await self._remove(sub)
            raise HubUnavailable(f"cannot subscribe to call {sub.call_sid}") from exc

    async def _send_subscribe(self, name: str, channel: _Channel) -> None:
        channel.pending += 1
        try:
            await self._pubsub.subscribe(name)
        except UNAVAILABLE as exc:
            channel.pending -= 1
            logger.warning("pub/sub subscribe failed: %s", exc)
            await self._close_pubsub()  # the reader notices and reconnects

    async def _remove(self, sub: Subscription) -> None:
        name = self.store.keys.channel(sub.call_sid)
        channel = self._channels.get(name)
        if channel is None or sub not in channel.subscribers:
            return
        channel.subscribers.discard(sub)
        if channel.subscribers:
            return
        del self._channels[name]
        if not channel.ready.done():
            channel.ready.cancel()
        if self._connected.is_set() and self._pubsub is not None:
            try:
                await self._pubsub.unsubscribe(name)
            except UNAVAILABLE as exc:
                logger.warning("pub/sub unsubscribe failed: %s", exc)

    def _drop(self, sub: Subscription, channel: _Channel) -> None:
        channel.subscribers.discard(sub)
        sub._drop()
        self.dropped_total += 1
        logger.warning("dropped a subscriber: %s", TOO_SLOW_REASON, extra={"call_sid": sub.call_sid})
        if self.on_drop is not None:
            self.on_drop(sub.call_sid)

    # -- the reader --------------------------------------------------------------------------

    async def _close_pubsub(self) -> None:
        self._connected.clear()
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _connect(self) -> None:
        assert self._client is not None
        pubsub = await pubsub_of(self._client)
        # The all-calls channel keeps the connection subscribed even with no local subscribers.
        await pubsub.subscribe(self.store.keys.calls_channel)
        self._pubsub = pubsub
        current = list(self._channels.items())
        for _, channel in current:
            channel.pending = 0
        # From here on, channels of new subscribers are subscribed by ``_add`` itself.
        self._connected.set()
        for name, channel in current:
            if self._channels.get(name) is channel:
                await self._send_subscribe(name, channel)

    async def _run(self) -> None:
        attempt = 0
        first = True
        while True:
            try:
                if self._pubsub is None:
                    await self._connect()
                    if not first:
                        self.reconnects += 1
                        logger.info("pub/sub reconnected; %d subscribers resync", self.subscriber_count)
                        for channel in self._channels.values():
                            for sub in list(channel.subscribers):
                                if not sub._offer(_RESYNC):
                                    self._drop(sub, channel)
                    first = False
                    attempt = 0
                message = await self._pubsub.get_message(timeout=1.0)
                if message is not None:
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except _READER_ERRORS as exc:
                if self._pubsub is not None or first:
                    logger.warning("pub/sub connection lost (%s); reconnecting", exc)
                first = False
                await self._close_pubsub()
                await asyncio.sleep(self.backoff.delay(attempt))
                attempt += 1

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        raw_name = message.get("channel", b"")
        name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
        channel = self._channels.get(name)
        if kind == "subscribe":
            if channel is not None and channel.pending > 0:
                channel.pending -= 1
                if channel.pending == 0 and not channel.ready.done():
                    channel.ready.set_result(None)
            return
        if kind != "message" or channel is None or not channel.subscribers:
            return
        data = message["data"]
        try:
            delivery = Delivery(events.decode(data), data if isinstance(data, bytes) else None)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("undecodable live event on %s: %s", name, exc)
            return
        for sub in list(channel.subscribers):
            if not sub._offer(delivery):
                self._drop(sub, channel)


# -- auth ------------------------------------------------------------------------------------------

__all__ = ["TOO_SLOW_REASON", "Delivery", "Hub", "HubUnavailable", "SubscriberTooSlow", "Subscription", "event_type"]
