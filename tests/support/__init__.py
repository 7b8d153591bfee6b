"""Helpers shared by the tests (one copy each): paths, fault proxies, hand-driven Twilio streams, fake HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from bridge.data import call_path

#: The repository's recorded wire fixtures and audio.
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
#: The demo call shipped in the package (60.8 s, two legs), with its reference turns beside it.
SUPPORT_CALL = call_path("support_call")
SHORT_CALL = FIXTURES / "calls" / "short_call.wav"


async def eventually(check: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Wait (bounded) until ``check()`` holds: server-side cleanup runs after the client has left."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")
