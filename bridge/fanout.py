"""Live fan-out to subscribers (dashboards) and the read-only call API.

Endpoints (all mounted from :data:`routes`):

- ``WS  /calls/{sid}/live[?after=<seq>]``: the finals so far (``seq > after``), then live events.
- ``GET /calls/{sid}/events[?after=<seq>]``: the same as Server-Sent Events; finals carry
  ``id: <seq>``, so a browser's ``Last-Event-ID`` resumes with no gap and no duplicate.
- ``GET /calls[?active=true|false&limit=N]``, ``GET /calls/{sid}``, ``GET /calls/{sid}/transcript``
  (``?format=text`` or ``Accept: text/plain`` for a speaker-labelled text transcript).

A subscriber subscribes *before* it reads the snapshot and then skips every final whose ``seq`` it
has already sent, so nothing falls between the two. One :class:`Hub` per process holds the only
Redis pub/sub connection: a call's channel is subscribed on its first local subscriber and
unsubscribed after its last. Each subscriber has a bounded queue; one that falls behind is dropped
(WS close 4008 "subscriber too slow"; SSE: the stream ends) without slowing anyone else. If the
pub/sub connection drops, the hub reconnects by itself and every subscriber re-reads the finals it
may have missed from the store.

WebSocket close codes: 4400 bad request, 4401 missing/invalid token, 4403 token does not grant the
call, 4404 unknown call, 4008 subscriber too slow, 1011 store unavailable, 1001 server shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge import events, tokens
from bridge.settings import Settings
from bridge.store import UNAVAILABLE, CallInfo, Store

logger = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4008
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNKNOWN_CALL = 4404
TOO_SLOW_REASON = "subscriber too slow"

#: Seconds between SSE comment lines that keep idle proxies from closing the stream.
SSE_HEARTBEAT = 15.0


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
_READER_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE, redis.exceptions.RedisError, RuntimeError)
_SUBSCRIBE_ERRORS: tuple[type[BaseException], ...] = (HubUnavailable, *UNAVAILABLE)
_Item = events.LiveEvent | _Resync | _Stop


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
        return self._events()

    async def _catch_up(self, up_to: int | None = None) -> AsyncIterator[events.LiveEvent]:
        """Finals after :attr:`last_seq` from the store (the snapshot, or what a gap lost)."""
        for final in await self.hub.store.finals(self.call_sid, after_seq=self.last_seq):
            if up_to is not None and final.seq > up_to:
                break
            if final.seq > self.last_seq:
                self.last_seq = final.seq
                yield final

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

    async def _events(self) -> AsyncIterator[events.LiveEvent]:
        async for final in self._catch_up():
            yield final
        ended = await self._ended()
        if ended is not None:
            yield ended
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
                async for final in self._catch_up():
                    yield final
                ended = await self._ended()
                if ended is not None:
                    yield ended
                    return
                continue
            if isinstance(item, events.Final):
                if item.seq <= self.last_seq:
                    continue  # already sent with the snapshot
                if item.seq > self.last_seq + 1:  # a gap: fetch what is missing first
                    async for final in self._catch_up(up_to=item.seq - 1):
                        yield final
                self.last_seq = item.seq
            yield item
            if isinstance(item, events.CallEnded):
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
        backoff_max: float = 5.0,
        on_drop: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.queue_size = queue_size or (settings.subscriber_queue if settings else 1000)
        self.subscribe_timeout = subscribe_timeout
        self.backoff_max = backoff_max
        #: Called with the call sid whenever a subscriber is dropped (e.g. a Prometheus counter).
        self.on_drop = on_drop
        #: Subscribers dropped for being too slow since start.
        self.dropped_total = 0
        #: Times the pub/sub connection was re-established after a failure.
        self.reconnects = 0
        self._channels: dict[str, _Channel] = {}
        self._client: aioredis.Redis | None = None
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
        pool = self.store.client.connection_pool
        # A connection of our own that surfaces failures at once (no silent reconnect that would lose
        # messages without us knowing to resync).
        kwargs = {
            **pool.connection_kwargs,
            "retry": Retry(NoBackoff(), 0),
            "client_name": f"{self.store.keys.prefix}:fanout-hub",
        }
        self._client = aioredis.Redis(
            connection_pool=aioredis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
        )
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
        pubsub = self._client.pubsub()
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
        delay = 0.05
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
                    delay = 0.05
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
                await asyncio.sleep(delay)
                delay = min(self.backoff_max, delay * 2)

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
        try:
            event = events.decode(message["data"])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("undecodable live event on %s: %s", name, exc)
            return
        for sub in list(channel.subscribers):
            if not sub._offer(event):
                self._drop(sub, channel)


# -- auth ------------------------------------------------------------------------------------------


class _Denied(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _token(conn: HTTPConnection) -> str:
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return conn.query_params.get("token", "")


def _authorize(conn: HTTPConnection, call_sid: str | None) -> tokens.Claims | None:
    """The token's claims (``None`` when auth is off); raises :class:`_Denied` (401/403)."""
    settings: Settings = conn.app.state.settings
    if not settings.subscriber_secret:
        return None
    token = _token(conn)
    if not token:
        raise _Denied(401, "missing token")
    try:
        claims = tokens.parse(settings.subscriber_secret, token)
    except tokens.TokenError as exc:
        raise _Denied(401, str(exc)) from None
    if call_sid is not None and not claims.allows(call_sid):
        raise _Denied(403, "token does not grant this call")
    return claims


def _after(conn: HTTPConnection, *, last_event_id: bool) -> int:
    raw = conn.headers.get("last-event-id", "") if last_event_id else ""
    raw = raw.strip() or conn.query_params.get("after", "0").strip() or "0"
    try:
        value = int(raw)
    except ValueError:
        raise _Denied(400, f"bad resume position {raw[:32]!r}") from None
    if value < 0:
        raise _Denied(400, "resume position must be >= 0")
    return value


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def _json(value: object) -> Response:
    return Response(msgspec.json.encode(value), media_type="application/json")


def _log_denied(conn: HTTPConnection, call_sid: str | None, denied: _Denied) -> None:
    logger.info(
        "%s %s refused: %d %s", conn.scope.get("type"), conn.url.path, denied.status, denied.reason,
        extra={"call_sid": call_sid or ""},
    )  # fmt: skip


# -- HTTP: calls and transcripts --------------------------------------------------------------------


async def list_calls(request: Request) -> Response:
    store: Store = request.app.state.store
    try:
        claims = _authorize(request, None)
    except _Denied as denied:
        _log_denied(request, None, denied)
        return _error(denied.status, denied.reason)
    active_raw = request.query_params.get("active", "").lower()
    active = {"true": True, "1": True, "false": False, "0": False, "": None}.get(active_raw, "bad")
    if active == "bad":
        return _error(400, "active must be true or false")
    try:
        limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
    except ValueError:
        return _error(400, "limit must be an integer")
    try:
        if claims is not None and not claims.all_calls:
            calls = [c for sid in claims.calls if (c := await store.get_call(sid)) is not None]
            calls = [c for c in calls if active is None or c.active == active][:limit]
        else:
            calls = await store.list_calls(active=active if isinstance(active, bool) else None, limit=limit)
    except UNAVAILABLE:
        logger.warning("store unavailable for GET /calls")
        return _error(503, "store unavailable")
    return _json(calls)


async def _call_or_error(request: Request) -> CallInfo | Response:
    call_sid = request.path_params["call_sid"]
    try:
        _authorize(request, call_sid)
    except _Denied as denied:
        _log_denied(request, call_sid, denied)
        return _error(denied.status, denied.reason)
    try:
        info = await request.app.state.store.get_call(call_sid)
    except UNAVAILABLE:
        logger.warning("store unavailable", extra={"call_sid": call_sid})
        return _error(503, "store unavailable")
    if info is None:
        return _error(404, "unknown call")
    assert isinstance(info, CallInfo)
    return info


async def get_call(request: Request) -> Response:
    info = await _call_or_error(request)
    return info if isinstance(info, Response) else _json(info)


def transcript_text(finals: list[events.Final]) -> str:
    """One ``Speaker: text`` line per final (Caller for inbound, Agent for outbound)."""
    return "".join(f"{events.SPEAKER.get(f.track, f.track)}: {f.text}\n" for f in finals)


async def get_transcript(request: Request) -> Response:
    """The live transcript ("as heard"), or with ``?source=batch`` the compliance one ("after the fact")."""
    info = await _call_or_error(request)
    if isinstance(info, Response):
        return info
    fmt = request.query_params.get("format", "").lower()
    if fmt not in ("", "json", "text"):
        return _error(400, "format must be json or text")
    source = request.query_params.get("source", "live").lower()
    if source not in ("live", "batch"):
        return _error(400, "source must be live or batch")
    accept = request.headers.get("accept", "")
    as_text = fmt == "text" or (not fmt and "text/plain" in accept and "application/json" not in accept)
    store: Store = request.app.state.store
    if source == "batch":
        from bridge import compliance

        try:
            batch = await compliance.get_batch_transcript(store.client, store.keys, info.call_sid)
        except UNAVAILABLE:
            return _error(503, "store unavailable")
        if batch is None:
            return _error(404, "no batch transcript yet")
        if as_text:
            lines = [f"{events.SPEAKER.get(u.track, u.track)}: {u.text}" for u in batch.utterances if u.text]
            return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""))
        return Response(compliance.encode_transcript(batch), media_type="application/json")
    try:
        finals = await store.transcript(info.call_sid)
    except UNAVAILABLE:
        return _error(503, "store unavailable")
    if as_text:
        return PlainTextResponse(transcript_text(finals))
    return _json(finals)


async def get_quality(request: Request) -> Response:
    """Live-vs-batch word error rate of a call (the quality signal), once the batch pass ran."""
    from bridge import compliance

    info = await _call_or_error(request)
    if isinstance(info, Response):
        return info
    store: Store = request.app.state.store
    try:
        quality = await compliance.get_quality(store.client, store.keys, info.call_sid)
    except UNAVAILABLE:
        return _error(503, "store unavailable")
    if quality is None:
        return _error(404, "no quality figures yet")
    return _json(quality)


# -- live: WebSocket and SSE -----------------------------------------------------------------------


#: A subscriber whose single send is blocked this long (its socket buffers full) is dropped as slow.
SEND_STALL_SECONDS = 5.0


async def _pump(
    sub: Subscription,
    send: Callable[[events.LiveEvent], Awaitable[None]],
    disconnected: Callable[[], Awaitable[None]],
) -> str:
    """Send the subscription's events until it ends; returns why: ``ended``, ``slow``, ``gone``."""

    async def forward() -> None:
        async for event in sub:
            try:
                async with asyncio.timeout(SEND_STALL_SECONDS):
                    await send(event)
            except TimeoutError:
                # Its socket buffers are full: the client stopped reading. Drop it, never wait on it.
                raise SubscriberTooSlow from None

    tasks = {
        asyncio.ensure_future(forward()): "ended",
        asyncio.ensure_future(sub.dropped.wait()): "slow",
        asyncio.ensure_future(disconnected()): "gone",
    }
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    task = next(iter(done))
    if sub.dropped.is_set():
        return "slow"
    exc = None if task.cancelled() else task.exception()
    if isinstance(exc, SubscriberTooSlow):
        return "slow"
    if exc is not None:
        raise exc
    return tasks[task]


async def live_ws(websocket: WebSocket) -> None:
    call_sid = websocket.path_params["call_sid"]
    log_extra = {"call_sid": call_sid}
    await websocket.accept()
    try:
        _authorize(websocket, call_sid)
        after = _after(websocket, last_event_id=False)
    except _Denied as denied:
        _log_denied(websocket, call_sid, denied)
        code = {401: CLOSE_UNAUTHORIZED, 403: CLOSE_FORBIDDEN}.get(denied.status, CLOSE_BAD_REQUEST)
        await websocket.close(code, denied.reason)
        return
    hub: Hub = websocket.app.state.hub
    try:
        if await hub.store.get_call(call_sid) is None:
            logger.info("live subscription to unknown call", extra=log_extra)
            await websocket.close(CLOSE_UNKNOWN_CALL, "unknown call")
            return
        async with hub.subscribe(call_sid, after=after) as sub:

            async def send(event: events.LiveEvent) -> None:
                await websocket.send_text(events.encode(event).decode())

            async def disconnected() -> None:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        return

            outcome = await _pump(sub, send, disconnected)
    except _SUBSCRIBE_ERRORS as exc:
        logger.warning("live subscription failed: %s", exc, extra=log_extra)
        await _close_quietly(websocket, 1011, "store unavailable")
        return
    except WebSocketDisconnect:
        return
    if outcome == "slow":
        await _close_quietly(websocket, CLOSE_TOO_SLOW, TOO_SLOW_REASON)
    elif outcome == "ended":
        shutting_down = hub._task is None
        await _close_quietly(websocket, 1001 if shutting_down else 1000, "server shutting down"
                             if shutting_down else "call ended")  # fmt: skip


async def _close_quietly(websocket: WebSocket, code: int, reason: str) -> None:
    """Close, but never hang on a peer that stopped reading."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(2.0):
            await websocket.close(code, reason)


def sse_frame(event: events.LiveEvent) -> bytes:
    """One Server-Sent Event: ``id`` (finals only), ``event`` and ``data`` lines."""
    head = f"id: {event.seq}\n" if isinstance(event, events.Final) else ""
    return f"{head}event: {event_type(event)}\n".encode() + b"data: " + events.encode(event) + b"\n\n"


class _EventStream:
    """The SSE response: an ASGI app so a stuck peer can be dropped without waiting on it."""

    def __init__(self, hub: Hub, call_sid: str, after: int) -> None:
        self.hub = hub
        self.call_sid = call_sid
        self.after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sub = self.hub.subscribe(self.call_sid, after=self.after)
        try:
            await sub.__aenter__()
        except HubUnavailable as exc:
            logger.warning("SSE subscription failed: %s", exc, extra={"call_sid": self.call_sid})
            await _error(503, "store unavailable")(scope, receive, send)
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"retry: 2000\n\n", "more_body": True})
            heartbeat_lock = asyncio.Lock()

            async def send_event(event: events.LiveEvent) -> None:
                async with heartbeat_lock:
                    await send({"type": "http.response.body", "body": sse_frame(event), "more_body": True})

            async def disconnected_or_heartbeat() -> None:
                while True:
                    try:
                        async with asyncio.timeout(SSE_HEARTBEAT):
                            message = await receive()
                    except TimeoutError:
                        async with heartbeat_lock:
                            await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})
                        continue
                    if message["type"] == "http.disconnect":
                        return

            outcome = await _pump(sub, send_event, disconnected_or_heartbeat)
        finally:
            await sub.__aexit__(None, None, None)
        if outcome == "gone":
            return
        if outcome == "slow":
            logger.info("SSE subscriber dropped: %s", TOO_SLOW_REASON, extra={"call_sid": self.call_sid})
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def live_sse(request: Request) -> Response | _EventStream:
    call_sid = request.path_params["call_sid"]
    try:
        _authorize(request, call_sid)
        after = _after(request, last_event_id=True)
    except _Denied as denied:
        _log_denied(request, call_sid, denied)
        return _error(denied.status, denied.reason)
    hub: Hub = request.app.state.hub
    try:
        if await hub.store.get_call(call_sid) is None:
            logger.info("SSE subscription to unknown call", extra={"call_sid": call_sid})
            return _error(404, "unknown call")
    except UNAVAILABLE:
        return _error(503, "store unavailable")
    return _EventStream(hub, call_sid, after)


routes: list[BaseRoute] = [
    Route("/calls", list_calls, methods=["GET"]),
    Route("/calls/{call_sid}", get_call, methods=["GET"]),
    Route("/calls/{call_sid}/transcript", get_transcript, methods=["GET"]),
    Route("/calls/{call_sid}/quality", get_quality, methods=["GET"]),
    Route("/calls/{call_sid}/events", live_sse, methods=["GET"]),
    WebSocketRoute("/calls/{call_sid}/live", live_ws),
]


__all__ = [
    "CLOSE_TOO_SLOW",
    "Hub",
    "HubUnavailable",
    "SubscriberTooSlow",
    "Subscription",
    "event_type",
    "routes",
    "sse_frame",
    "transcript_text",
]
