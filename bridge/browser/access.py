"""Who may open a browser capture, and how often.

Capture costs money (a vendor recognizer bills every second) and writes a recording, so when
``BRIDGE_SUBSCRIBER_SECRET`` is set a capture needs a token with the ``capture`` scope
(``bridge token --capture``), offered as a WebSocket subprotocol (``bridge.token.<token>``) or an
``Authorization: Bearer`` header, never read from the URL (URLs end up in proxy logs and history).
Unset, capture is open: a developer's box. Either way each client address may open
``BRIDGE_CAPTURE_PER_MINUTE`` connections in any minute (counted per process).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

from starlette.requests import HTTPConnection

from bridge.live.auth import TOKEN_SUBPROTOCOL_PREFIX, TokenError, parse
from bridge.settings import Settings

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_DURATION_CAP = 4408
CLOSE_RATE_LIMITED = 4429
#: Client addresses remembered at most (the oldest is forgotten first).
MAX_CLIENTS = 10_000


class Refused(Exception):
    """Close the capture socket with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


def capture_token(conn: HTTPConnection) -> str:
    """The token offered as a ``bridge.token.…`` subprotocol or a bearer header (never ``?token=``)."""
    for protocol in conn.scope.get("subprotocols") or ():
        if protocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return str(protocol[len(TOKEN_SUBPROTOCOL_PREFIX) :])
    header = conn.headers.get("authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


def check_capture(conn: HTTPConnection, settings: Settings) -> None:
    """Raise :class:`Refused` unless capture is open or the token has the capture scope."""
    if not settings.subscriber_secret:
        return
    token = capture_token(conn)
    if not token:
        raise Refused(CLOSE_UNAUTHORIZED, "missing capture token (bridge token --capture)")
    try:
        claims = parse(settings.subscriber_secret, token)
    except TokenError as exc:
        raise Refused(CLOSE_UNAUTHORIZED, str(exc)) from None
    if claims.scope != "capture":
        raise Refused(CLOSE_FORBIDDEN, "token has no capture scope (bridge token --capture)")


class RateLimiter:
    """At most ``per_minute`` admissions per key in any sliding minute."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._seen: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()

    def admit(self, key: str) -> float:
        """0 when ``key`` may go on (and it is counted), else the seconds until it may."""
        now = self.clock()
        times = self._seen.get(key)
        if times is None:
            times = self._seen[key] = collections.deque()
            while len(self._seen) > MAX_CLIENTS:
                self._seen.popitem(last=False)
        self._seen.move_to_end(key)
        while times and now - times[0] >= 60.0:
            times.popleft()
        if len(times) >= self.per_minute:
            return max(0.1, 60.0 - (now - times[0]))
        times.append(now)
        return 0.0


__all__ = [
    "CLOSE_BAD_REQUEST",
    "CLOSE_DURATION_CAP",
    "CLOSE_FORBIDDEN",
    "CLOSE_RATE_LIMITED",
    "CLOSE_UNAUTHORIZED",
    "RateLimiter",
    "Refused",
    "capture_token",
    "check_capture",
]
