"""Small HTTP helpers shared by the REST and live endpoints: one shape for errors and JSON, and the
answers to the two failures every call endpoint meets (a path that is not a CallSid, a store error)."""

from __future__ import annotations

import logging

import msgspec
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

from bridge.sids import is_call_sid
from bridge.store.client import UNAVAILABLE

logger = logging.getLogger(__name__)


def error(status: int, reason: str) -> JSONResponse:
    """``{"error": reason}`` with ``status``."""
    return JSONResponse({"error": reason}, status_code=status)


def json_response(value: object, status: int = 200) -> Response:
    """Any msgspec-encodable value (structs included) as ``application/json``."""
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def log_refused(conn: HTTPConnection, call_sid: str | None, status: int, reason: str) -> None:
    logger.info(
        "%s %s refused: %d %s", conn.scope.get("type"), conn.url.path, status, reason,
        extra={"call_sid": call_sid or ""},
    )  # fmt: skip


def refuse_bad_call_sid(conn: HTTPConnection, call_sid: str) -> JSONResponse | None:
    """A 400 for a path whose CallSid is not shaped like Twilio's (logged, escaped); ``None`` when it is."""
    if is_call_sid(call_sid):
        return None
    log_refused(conn, call_sid[:64], 400, "invalid CallSid")
    return error(400, "invalid CallSid")


def store_failure(conn: HTTPConnection, call_sid: str | None, exc: BaseException) -> JSONResponse:
    """A 503 for a store call that failed: Redis unreachable, or a command it refused."""
    reason = "store unavailable" if isinstance(exc, UNAVAILABLE) else "store error"
    logger.warning(
        "%s %s: %s (%s: %s)", conn.scope.get("type"), conn.url.path, reason, type(exc).__name__, str(exc)[:200],
        extra={"call_sid": call_sid or ""},
    )  # fmt: skip
    return error(503, reason)


__all__ = ["error", "json_response", "log_refused", "refuse_bad_call_sid", "store_failure"]
