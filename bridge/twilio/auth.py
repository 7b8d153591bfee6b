"""X-Twilio-Signature checks (HTTP webhooks and the Media Streams upgrade) and per-call stream tokens.

Twilio signs the exact URL it was given (plus the form params), so behind a proxy the URL we see
is not the one that was signed: with ``settings.public_url`` set we rebuild the public URL
(``https://`` for webhooks, its ``wss://`` twin for the socket, which Twilio signs with empty
params). Without it we use the URL the request arrived on.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence

from starlette.requests import HTTPConnection
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped, unused-ignore]

from bridge.settings import Settings

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-twilio-signature"

_warned_insecure = False


class SignatureError(Exception):
    """The request is not provably from Twilio; ``str(exc)`` is the reason (safe to log)."""


def _warn_insecure_once() -> None:
    global _warned_insecure
    if not _warned_insecure:
        _warned_insecure = True
        logger.warning(
            "INSECURE: X-Twilio-Signature checks are OFF (BRIDGE_INSECURE_SKIP_SIGNATURE); "
            "anyone can post webhooks and open media streams. Never run this in production."
        )


def public_request_url(conn: HTTPConnection, settings: Settings) -> str:
    """The URL Twilio signed for this request (public https/wss URL when configured)."""
    if not settings.public_url:
        return str(conn.url)
    is_socket = conn.scope["type"] == "websocket"
    base = settings.public_ws_url if is_socket else settings.public_url.rstrip("/")
    query = conn.url.query
    return base + conn.url.path + ("?" + query if query else "")


def check_signature(
    conn: HTTPConnection,
    settings: Settings,
    params: Mapping[str, str] | Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Raise :class:`SignatureError` unless the request carries a valid Twilio signature.

    ``params`` are the POSTed form fields (a Starlette ``FormData`` works: repeated keys are
    honoured); the WebSocket upgrade is signed with empty params.
    """
    if not settings.verify_signatures:
        _warn_insecure_once()
        return
    if not settings.twilio_auth_token:
        raise SignatureError("TWILIO_AUTH_TOKEN is not configured; refusing unverifiable Twilio request")
    signature = conn.headers.get(SIGNATURE_HEADER, "")
    if not signature:
        raise SignatureError("missing X-Twilio-Signature header")
    url = public_request_url(conn, settings)
    validator = RequestValidator(settings.twilio_auth_token)
    if not validator.validate(url, params or {}, signature):
        raise SignatureError(f"X-Twilio-Signature does not match {url}")


def sign(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """The signature Twilio would send for ``url`` + ``params`` (for replay and tests)."""
    return str(RequestValidator(auth_token).compute_signature(url, params or {}))


def stream_token(auth_token: str, call_sid: str) -> str:
    """Per-call token for ``<Parameter name="token">``: proves the stream was started by our TwiML."""
    mac = hmac.new(auth_token.encode(), b"twilio-media-stream:" + call_sid.encode(), hashlib.sha256)
    return mac.hexdigest()


def verify_stream_token(auth_token: str, call_sid: str, token: str) -> bool:
    return bool(auth_token) and hmac.compare_digest(stream_token(auth_token, call_sid).encode(), token.encode())


__all__ = [
    "SIGNATURE_HEADER",
    "SignatureError",
    "check_signature",
    "public_request_url",
    "sign",
    "stream_token",
    "verify_stream_token",
]
