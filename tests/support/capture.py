"""A capture client for ``WS /browser/media`` (a plain WebSocket client, as a page would open it)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bridge.audio import to_twilio_mulaw
from tests.support import SHORT_CALL

#: 2.5 s of a real call's caller track (8 kHz mu-law).
AUDIO = to_twilio_mulaw(SHORT_CALL)[0][:20000]


async def open_capture(http: str, *, token: str = "", protocols: tuple[str, ...] = ("bridge.capture",),
                       query: str = "") -> ClientConnection:  # fmt: skip
    offered = [*protocols, *([f"bridge.token.{token}"] if token else [])]
    url = http.replace("http://", "ws://") + "/browser/media" + query
    return await connect(url, subprotocols=offered or None)  # type: ignore[arg-type]


async def started(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(await ws.recv())
    assert message["type"] == "started"
    return message


async def close_of(ws: ClientConnection) -> tuple[int, str]:
    """The close code and reason the server ends the socket with."""
    try:
        while True:
            await ws.recv()
    except ConnectionClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code, exc.rcvd.reason


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy (the bridge writes behind, asynchronously)."""
    for _ in range(int(timeout / 0.05)):
        if result := await check():
            return result
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")
