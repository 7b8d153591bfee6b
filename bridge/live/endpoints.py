"""Live subscriber endpoints: the finals so far, then live events, over WebSocket or Server-Sent Events.

- ``WS  /calls/{sid}/live[?after=<seq>]``
- ``GET /calls/{sid}/events[?after=<seq>]``: finals carry ``id: <seq>``, so a browser's
  ``Last-Event-ID`` resumes with no gap and no duplicate.

WebSocket close codes: 4400 bad request (a path that is not a CallSid, a bad ``after``), 4401
missing/invalid token, 4403 token does not grant the call, 4404 unknown call, 4008 subscriber too
slow, 1011 store unavailable, 1001 server shutting down. The socket is accepted (with the
``bridge.live`` subprotocol when offered) before it is refused, so a browser sees the code and the
reason, and can tell "stop, ask for a new token" from "reconnect".

A resume position is a decimal integer of at most 15 digits; anything else is a 400 (4400), never
a Redis error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from bridge import events
from bridge.live.auth import LIVE_SUBPROTOCOL, Denied, authorize
from bridge.live.hub import TOO_SLOW_REASON, Delivery, Hub, HubUnavailable, SubscriberTooSlow, Subscription
from bridge.responses import error, log_refused, refuse_bad_call_sid, store_failure
from bridge.sids import is_call_sid
from bridge.store import STORE_ERRORS

logger = logging.getLogger(__name__)

CLOSE_TOO_SLOW = 4008
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_UNKNOWN_CALL = 4404

#: Seconds between SSE comment lines that keep idle proxies from closing the stream.
SSE_HEARTBEAT = 15.0
_SUBSCRIBE_ERRORS: tuple[type[BaseException], ...] = (HubUnavailable, *STORE_ERRORS)
_SEQ = re.compile(r"[0-9]{1,15}")


def resume_after(conn: HTTPConnection, *, last_event_id: bool) -> int:
    """The final seq a subscriber resumes after (``?after=`` or SSE ``Last-Event-ID``)."""
    raw = conn.headers.get("last-event-id", "") if last_event_id else ""
    raw = raw.strip() or conn.query_params.get("after", "0").strip() or "0"
    if _SEQ.fullmatch(raw) is None:
        raise Denied(400, f"bad resume position {raw[:32]!r} (a final's seq: 0 to 15 digits)")
    return int(raw)


#: A subscriber whose single send is blocked this long (its socket buffers full) is dropped as slow.
SEND_STALL_SECONDS = 5.0


async def _pump(
    sub: Subscription,
    send: Callable[[Delivery], Awaitable[None]],
    disconnected: Callable[[], Awaitable[None]],
) -> str:
    """Send the subscription's events until it ends; returns why: ``ended``, ``slow``, ``gone``."""

    async def forward() -> None:
        async for delivery in sub.deliveries():
            try:
                async with asyncio.timeout(SEND_STALL_SECONDS):
                    await send(delivery)
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
    if isinstance(exc, STORE_ERRORS):
        logger.warning("live subscription lost its store: %s: %s", type(exc).__name__, exc,
                       extra={"call_sid": sub.call_sid})  # fmt: skip
        return "store"
    if exc is not None:
        raise exc
    return tasks[task]


async def live_ws(websocket: WebSocket) -> None:
    call_sid = websocket.path_params["call_sid"]
    log_extra = {"call_sid": call_sid}
    offered = websocket.scope.get("subprotocols") or ()
    await websocket.accept(subprotocol=LIVE_SUBPROTOCOL if LIVE_SUBPROTOCOL in offered else None)
    try:
        if not is_call_sid(call_sid):
            raise Denied(400, "invalid CallSid")
        authorize(websocket, call_sid)
        after = resume_after(websocket, last_event_id=False)
    except Denied as denied:
        log_refused(websocket, call_sid[:64], denied.status, denied.reason)
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

            async def send(delivery: Delivery) -> None:
                await websocket.send_text(delivery.text)

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
    elif outcome == "store":
        await _close_quietly(websocket, 1011, "store unavailable")
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
    return Delivery(event).sse


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
            await error(503, "store unavailable")(scope, receive, send)
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

            async def send_event(delivery: Delivery) -> None:
                async with heartbeat_lock:
                    await send({"type": "http.response.body", "body": delivery.sse, "more_body": True})

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
        # outcome "store": the stream ends; the browser reconnects with Last-Event-ID and loses nothing
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await send({"type": "http.response.body", "body": b"", "more_body": False})


async def live_sse(request: Request) -> Response | _EventStream:
    call_sid = request.path_params["call_sid"]
    bad = refuse_bad_call_sid(request, call_sid)
    if bad is not None:
        return bad
    try:
        authorize(request, call_sid)
        after = resume_after(request, last_event_id=True)
    except Denied as denied:
        log_refused(request, call_sid, denied.status, denied.reason)
        return error(denied.status, denied.reason)
    hub: Hub = request.app.state.hub
    try:
        if await hub.store.get_call(call_sid) is None:
            logger.info("SSE subscription to unknown call", extra={"call_sid": call_sid})
            return error(404, "unknown call")
    except STORE_ERRORS as exc:
        return store_failure(request, call_sid, exc)
    return _EventStream(hub, call_sid, after)


routes: list[BaseRoute] = [
    Route("/calls/{call_sid}/events", live_sse, methods=["GET"]),
    WebSocketRoute("/calls/{call_sid}/live", live_ws),
]

__all__ = ["CLOSE_TOO_SLOW", "SSE_HEARTBEAT", "live_sse", "live_ws", "resume_after", "routes", "sse_frame"]
