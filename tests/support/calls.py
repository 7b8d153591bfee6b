"""Playing calls into a running bridge from tests: audio with one scripted word per second, frames, polling."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bridge.testing import TwilioStream, window_word
from bridge.twilio import models as tm


def speech(seconds: float, seed: int) -> bytes:
    """Distinct bytes per second, so every scripted final has its own word (and no byte is mu-law silence)."""
    return bytes((seed * 7919 + i * 31 + (i // 8000) * 101) % 255 for i in range(int(seconds * 8000)))


def words(audio: bytes) -> list[str]:
    """The words the scripted recognizer hears in ``audio`` sent from the start of a connection."""
    return [window_word(audio[i : i + 8000]) for i in range(0, len(audio), 8000)]


async def send(stream: TwilioStream, audio: bytes, *, track: tm.Track = "inbound", start_ms: int = 0) -> None:
    """``audio`` as 20 ms frames with contiguous Twilio timestamps from ``start_ms``."""
    for i in range(0, len(audio), 160):
        await stream.media(track, start_ms + i // 8, audio[i : i + 160])


async def send_both(stream: TwilioStream, inbound: bytes, outbound: bytes) -> None:
    for i in range(0, max(len(inbound), len(outbound)), 160):
        if i < len(inbound):
            await stream.media("inbound", i // 8, inbound[i : i + 160])
        if i < len(outbound):
            await stream.media("outbound", i // 8, outbound[i : i + 160])


async def poll(predicate: Callable[[], Awaitable[bool]], what: str, *, seconds: float = 20.0) -> None:
    """Wait (bounded) until ``predicate()`` holds; the bound only keeps a broken build from hanging."""
    for _ in range(int(seconds / 0.025)):
        if await predicate():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


__all__ = ["poll", "send", "send_both", "speech", "words"]
