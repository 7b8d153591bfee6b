"""What every REST route of the API does first: authorize, parse the CallSid and the query flags.

Each helper returns the value, or the error :class:`Response` to send as it is (already logged where
a refusal needs a log line), so a route reads top to bottom without exceptions for bad input.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from bridge.live.auth import Claims, Denied, authorize
from bridge.responses import error, json_response, log_refused, refuse_bad_call_sid, store_failure
from bridge.store import STORE_ERRORS, CallInfo, Store

_FLAGS: dict[str, bool | None] = {"true": True, "1": True, "false": False, "0": False, "": None}


def claims_or_error(request: Request) -> Claims | Response | None:
    """The subscriber token's claims for a route about no single call (``None``: auth is off)."""
    try:
        return authorize(request, None)
    except Denied as denied:
        log_refused(request, None, denied.status, denied.reason)
        return error(denied.status, denied.reason)


def query_flag(request: Request, name: str) -> bool | Response | None:
    """``?name=true|false`` (``1``/``0``); ``None`` when absent; a 400 for anything else."""
    raw = request.query_params.get(name, "").lower()
    if raw not in _FLAGS:
        return error(400, f"{name} must be true or false")
    return _FLAGS[raw]


def query_limit(request: Request, *, default: int = 100, most: int = 1000) -> int | Response:
    """``?limit=N`` clamped to ``1..most``; a 400 when it is not an integer."""
    try:
        return min(most, max(1, int(request.query_params.get("limit", str(default)))))
    except ValueError:
        return error(400, "limit must be an integer")


async def call_or_error(request: Request) -> CallInfo | Response:
    """The call named by the path, once its CallSid is well-formed and the token may read it."""
    call_sid = request.path_params["call_sid"]
    bad = refuse_bad_call_sid(request, call_sid)
    if bad is not None:
        return bad
    try:
        authorize(request, call_sid)
    except Denied as denied:
        log_refused(request, call_sid, denied.status, denied.reason)
        return error(denied.status, denied.reason)
    store: Store = request.app.state.store
    try:
        info = await store.get_call(call_sid)
    except STORE_ERRORS as exc:
        return store_failure(request, call_sid, exc)
    if info is None:
        return error(404, "unknown call")
    return info


async def call_document(
    request: Request, load: Callable[[Store, str], Awaitable[msgspec.Struct | None]], missing: str
) -> Response:
    """A stored per-call document (quality, compliance report…) as JSON; a 404 saying ``missing``
    before the pass that writes it has run."""
    info = await call_or_error(request)
    if isinstance(info, Response):
        return info
    try:
        document = await load(request.app.state.store, info.call_sid)
    except STORE_ERRORS as exc:
        return store_failure(request, info.call_sid, exc)
    if document is None:
        return error(404, missing)
    return json_response(document)


__all__ = ["call_document", "call_or_error", "claims_or_error", "query_flag", "query_limit"]
