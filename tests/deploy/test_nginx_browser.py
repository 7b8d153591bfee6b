"""A browser capture behind the shipped nginx rules, and its commit sent to the other instance: nginx
upgrades ``/browser/media``, and the commit is routed through Redis to the instance carrying the call.
The same two ``bridge serve`` processes and nginx fronts as ``tests/deploy/test_nginx.py``."""

from __future__ import annotations

import httpx

from bridge.store import Store
from bridge.testing.deepgram import window_word
from tests.deploy.test_nginx import Stack, stack
from tests.support.capture import AUDIO, close_of, open_capture, started, until

__all__ = ["stack"]  # the fixture, shared with test_nginx.py

HALF = AUDIO[:4000]


async def test_a_capture_through_nginx_is_committed_from_the_other_instance_once(stack: Stack, store: Store) -> None:
    ws = await open_capture(stack.to_a.url)
    assert ws.subprotocol == "bridge.capture"
    call_sid = (await started(ws))["call_sid"]
    for i in range(0, len(HALF), 160):
        await ws.send(HALF[i : i + 160])

    async def ready() -> bool:
        info = await store.get_call(call_sid)
        return stack.heard_by_a.received_bytes >= len(HALF) and info is not None and info.active

    await until(ready)
    async with httpx.AsyncClient(base_url=stack.to_b.url, timeout=10) as client:
        r = await client.post(f"/calls/{call_sid}/commit", json={"track": "inbound"})
    assert (r.status_code, r.json()) == (200, {"call_sid": call_sid, "track": "inbound", "at": 0.5})

    async def committed() -> list[tuple[float, float, str]]:
        return [(f.start, f.end, f.text) for f in await store.transcript(call_sid)]

    assert await until(committed) == [(0.0, 0.5, window_word(HALF))]
    await ws.send('{"type": "stop"}')
    assert await close_of(ws) == (1000, "stopped")

    async def ended() -> bool:  # written after the call's recognizer stream has closed
        info = await store.get_call(call_sid)
        return info is not None and info.status == "ended"

    await until(ended)
    assert stack.heard_by_b.received_bytes == 0  # b never carried it: a did the commit
    assert stack.heard_by_a.connections[0].controls.count("Finalize") == 2  # the commit's, and close's
