"""Reading Server-Sent Events in tests (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""

from __future__ import annotations

import asyncio

import httpx


def parse_sse(text: str) -> list[dict[str, str]]:
    """The frames of an event stream (comments dropped), each as its fields."""
    frames = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            frames.append(fields)
    return frames


async def read_sse(response: httpx.Response, until: str, *, timeout: float = 5.0) -> list[dict[str, str]]:
    """Read SSE frames until one of type ``until`` arrives."""
    buffer = ""
    async with asyncio.timeout(timeout):
        async for chunk in response.aiter_text():
            buffer += chunk
            frames = parse_sse(buffer.rsplit("\n\n", 1)[0] + "\n\n") if "\n\n" in buffer else []
            if any(f.get("event") == until for f in frames):
                return frames
    return parse_sse(buffer)


__all__ = ["parse_sse", "read_sse"]
