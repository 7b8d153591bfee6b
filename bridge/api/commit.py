"""``POST /calls/{sid}/commit``: the application says a turn is over (a push-to-talk release, an
agent's "next" button), so the track's recognizer closes its current segment now.

Body ``{"track": "inbound"|"outbound"}``. Authorized like every call endpoint: a subscriber token
that grants the call (the capture page holds one for its own call). Answers 200
``{"call_sid", "track", "at"}`` (``at``: the call-clock second the segment closes at; its final follows
on the live feed and is stored once), 400 bad CallSid or body, 401/403 token, 404 unknown or ended
call or no such open track, 409 the track is not being transcribed, or the call is carried by another
instance that did not answer (a call on another instance is committed there:
:mod:`bridge.call.control`), 503 Redis away while finding out where the call is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bridge.call.control import CommitRouter, commit_here
from bridge.live.auth import Denied, authorize
from bridge.responses import error, json_response, log_refused, refuse_bad_call_sid, store_failure
from bridge.store import STORE_ERRORS, Store

if TYPE_CHECKING:
    from bridge.call.manager import CallManager

#: Largest request body read.
MAX_BODY = 1024


class CommitRequest(msgspec.Struct, forbid_unknown_fields=True):
    track: Literal["inbound", "outbound"]


class Committed(msgspec.Struct):
    call_sid: str
    track: str
    #: Call-clock second the segment was closed at.
    at: float


def _count(request: Request, result: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.commits.labels(result).inc()


def _refuse(request: Request, call_sid: str, status: int, reason: str) -> Response:
    log_refused(request, call_sid, status, reason)
    _count(request, str(status))
    return error(status, reason)


async def commit_call(request: Request) -> Response:
    call_sid = request.path_params["call_sid"]
    bad = refuse_bad_call_sid(request, call_sid)
    if bad is not None:
        _count(request, "400")
        return bad
    try:
        authorize(request, call_sid)
    except Denied as denied:
        return _refuse(request, call_sid, denied.status, denied.reason)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return _refuse(request, call_sid, 400, f"body larger than {MAX_BODY} bytes")
    try:
        track = msgspec.json.decode(body, type=CommitRequest).track
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return _refuse(request, call_sid, 400, f'body must be {{"track": "inbound"|"outbound"}}: {exc}')
    calls: CallManager = request.app.state.calls
    answer = await commit_here(calls, call_sid, track)
    if answer is None:  # not carried here: is it carried at all, and where?
        store: Store = request.app.state.store
        try:
            info = await store.get_call(call_sid)
        except STORE_ERRORS as exc:
            _count(request, "503")
            return store_failure(request, call_sid, exc)
        if info is None or not info.active:
            return _refuse(request, call_sid, 404, "unknown or ended call")
        router: CommitRouter | None = getattr(request.app.state, "commit_router", None)
        answer = await router.ask(call_sid, track) if router is not None else None
        if answer is None:
            return _refuse(request, call_sid, 409, "call is carried by another bridge instance that did not answer")
    if answer.status != 200 or answer.at is None:
        return _refuse(request, call_sid, answer.status, answer.error)
    _count(request, "200")
    return json_response(Committed(call_sid=call_sid, track=track, at=answer.at))


routes = [Route("/calls/{call_sid}/commit", commit_call, methods=["POST"])]

__all__ = ["MAX_BODY", "CommitRequest", "Committed", "commit_call", "routes"]
