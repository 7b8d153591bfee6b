"""Subscriber access: which calls a dashboard may watch, and until when.

A token is ``v1.<claims>.<signature>``: base64url JSON claims ``{"calls": [...], "exp": <unix time>}``
signed with HMAC-SHA256 under the shared secret (``BRIDGE_SUBSCRIBER_SECRET``). ``"*"`` in ``calls``
grants every call. Tokens are minted by whatever authenticates agents (``bridge token`` or the
agent desktop's backend); the bridge only verifies them, so it holds no session state.

:func:`authorize` is the one check every subscriber endpoint (live and REST) makes. The token comes
in ``Authorization: Bearer …``; a browser's ``WebSocket``, which cannot set headers, offers it as a
subprotocol (``new WebSocket(url, ["bridge.live", "bridge.token." + token])``; the server answers
``bridge.live``), so it stays out of URLs, proxy logs and browser history. The ``token`` query
parameter is still read, for clients that have no other way (``EventSource``).
A token that is not ASCII, not three parts or badly signed is simply invalid: 401, never an error.

A token's ``scope`` says what it is for: ``subscribe`` (the default, left out of the claims so every
earlier token keeps its bytes) reads calls; ``capture`` (``bridge token --capture``) only opens
browser capture connections (:mod:`bridge.browser`) and is refused by every subscriber endpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Literal

import msgspec
from starlette.requests import HTTPConnection

from bridge.settings import Settings

_VERSION = "v1"
ALL_CALLS = "*"
#: The subprotocol the live WebSocket speaks, and the prefix of the one that carries a token.
LIVE_SUBPROTOCOL = "bridge.live"
TOKEN_SUBPROTOCOL_PREFIX = "bridge.token."
Scope = Literal["subscribe", "capture"]


class TokenError(ValueError):
    """The token is malformed, badly signed or expired."""


class Claims(msgspec.Struct, kw_only=True, frozen=True, omit_defaults=True):
    calls: list[str]
    exp: int
    scope: Scope = "subscribe"

    def allows(self, call_sid: str) -> bool:
        return ALL_CALLS in self.calls or call_sid in self.calls

    @property
    def all_calls(self) -> bool:
        return ALL_CALLS in self.calls


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, message: bytes) -> str:
    return _b64(hmac.new(secret.encode(), message, hashlib.sha256).digest())


def mint(secret: str, calls: list[str], ttl: int, *, now: float | None = None, scope: Scope = "subscribe") -> str:
    """A token for ``calls`` (``["*"]`` for all) valid for ``ttl`` seconds."""
    if not secret:
        raise ValueError("cannot mint a token without a secret")
    issued = time.time() if now is None else now
    body = _b64(msgspec.json.encode(Claims(calls=list(calls), exp=int(issued + ttl), scope=scope)))
    message = f"{_VERSION}.{body}"
    return f"{message}.{_sign(secret, message.encode())}"


def parse(secret: str, token: str, *, now: float | None = None) -> Claims:
    """The claims of a valid token; raises :class:`TokenError` otherwise."""
    if not token.isascii():
        raise TokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != _VERSION:
        raise TokenError("malformed token")
    message = f"{parts[0]}.{parts[1]}".encode("ascii")
    if not hmac.compare_digest(_sign(secret, message).encode("ascii"), parts[2].encode("ascii")):
        raise TokenError("bad token signature")
    try:
        claims = msgspec.json.decode(_unb64(parts[1]), type=Claims)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise TokenError("malformed token claims") from None
    if claims.exp <= (time.time() if now is None else now):
        raise TokenError("token expired")
    return claims


def verify(secret: str, token: str, call_sid: str) -> bool:
    """True when ``token`` is a valid subscriber token that grants ``call_sid``."""
    try:
        claims = parse(secret, token)
        return claims.scope == "subscribe" and claims.allows(call_sid)
    except TokenError:
        return False


class Denied(Exception):
    """The request may not have what it asked for: answer with ``status`` (401, 403 or 400)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def bearer(conn: HTTPConnection) -> str:
    """The token of a request: ``Authorization: Bearer``, a ``bridge.token.…`` subprotocol, or ``?token=``."""
    header = conn.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    for protocol in conn.scope.get("subprotocols") or ():
        if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return str(protocol[len(TOKEN_SUBPROTOCOL_PREFIX) :])
    return conn.query_params.get("token", "")


def authorize(conn: HTTPConnection, call_sid: str | None) -> Claims | None:
    """The token's claims (``None`` when auth is off); raises :class:`Denied` (401/403)."""
    settings: Settings = conn.app.state.settings
    if not settings.subscriber_secret:
        return None
    token = bearer(conn)
    if not token:
        raise Denied(401, "missing token")
    try:
        claims = parse(settings.subscriber_secret, token)
    except TokenError as exc:
        raise Denied(401, str(exc)) from None
    if claims.scope != "subscribe":
        raise Denied(403, f"a {claims.scope} token cannot read calls")
    if call_sid is not None and not claims.allows(call_sid):
        raise Denied(403, "token does not grant this call")
    return claims


__all__ = [
    "ALL_CALLS",
    "LIVE_SUBPROTOCOL",
    "TOKEN_SUBPROTOCOL_PREFIX",
    "Claims",
    "Denied",
    "Scope",
    "TokenError",
    "authorize",
    "bearer",
    "mint",
    "parse",
    "verify",
]
