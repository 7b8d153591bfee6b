"""``DELETE /calls/{sid}``: erase a call (Redis keys, index entries, jobs, webhooks, files).

Disabled (404) unless ``BRIDGE_ADMIN_TOKEN`` is set; then it needs ``Authorization: Bearer <token>``
(401 without one, 403 for another, compared in constant time), and a path shaped like a CallSid (400).
Every erasure writes one audit line (logger ``bridge.audit``) naming the token by its fingerprint
(never the token), the call and what was erased; every refusal is logged with the call id.
A call this process still carries is erased all the same: its later writes meet the tombstone, and
what its recording writes after the erasure is deleted by the sweeper once the call ends.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.responses import error, json_response, log_refused, refuse_bad_call_sid, store_failure
from bridge.retention.erase import erase_call
from bridge.settings import Settings
from bridge.store import STORE_ERRORS, Store

audit = logging.getLogger("bridge.audit")


def fingerprint(token: str) -> str:
    """Who used a token, without the token: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _denied(request: Request, call_sid: str, settings: Settings) -> JSONResponse | None:
    """404/401/403 unless the request carries the admin token."""
    if not settings.admin_token:
        log_refused(request, call_sid[:64], 404, "erasure disabled (BRIDGE_ADMIN_TOKEN unset)")
        return error(404, "not found")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        log_refused(request, call_sid[:64], 401, "no bearer token")
        response = error(401, "admin bearer token required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
    if not hmac.compare_digest(token.strip().encode(), settings.admin_token.encode()):
        log_refused(request, call_sid[:64], 403, f"wrong admin token (fingerprint {fingerprint(token.strip())})")
        return error(403, "wrong admin token")
    return None


async def delete_call(request: Request) -> Response:
    settings: Settings = request.app.state.settings
    call_sid: str = request.path_params["call_sid"]
    denied = _denied(request, call_sid, settings)
    if denied is not None:
        return denied
    bad = refuse_bad_call_sid(request, call_sid)
    if bad is not None:
        return bad
    store: Store = request.app.state.store
    try:
        erasure = await erase_call(store, settings.recording_dir, call_sid)
    except STORE_ERRORS as exc:
        return store_failure(request, call_sid, exc)
    calls = getattr(request.app.state, "calls", None)
    carried = calls is not None and call_sid in calls.sessions
    r = erasure.redis
    audit.warning(
        "call erased by admin token %s: %d keys (%s), %d index entries, %d recording jobs, %d webhook deliveries, "
        "%d files (%s)%s", fingerprint(settings.admin_token), len(r.keys), ", ".join(r.keys), r.index_entries, r.jobs,
        r.webhooks, len(erasure.files), ", ".join(erasure.files),
        "; still carried here: the sweeper deletes what it records until it ends" if carried else "",
        extra={"call_sid": call_sid},
    )  # fmt: skip
    return json_response({"call_sid": call_sid, "erased": erasure, "carried": carried})


routes: list[Route] = [Route("/calls/{call_sid}", delete_call, methods=["DELETE"])]

__all__ = ["delete_call", "fingerprint", "routes"]
