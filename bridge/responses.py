"""Small HTTP helpers shared by the REST, live and Twilio endpoints: one shape for errors and JSON."""

from __future__ import annotations

import logging

import msgspec
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response

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


__all__ = ["error", "json_response", "log_refused"]
