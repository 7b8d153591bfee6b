"""A full instance refuses a new media stream before the upgrade; nginx (``deploy/nginx/bridge-locations.conf``
as is) then carries it to the other instance, so admission control never costs a call its stream."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.store import Store
from bridge.testing import ScriptedDeepgramServer, TwilioStream
from tests.support.bridges import TWILIO_TOKEN, BridgeProcess, bridge_env
from tests.support.calls import send, speech
from tests.support.nginx import NGINX, Nginx

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (deploy/system-deps.sh)")


async def test_a_stream_refused_by_a_full_instance_lands_on_the_other_one(
    redis_url: str, store: Store, tmp_path: Path
) -> None:
    async with ScriptedDeepgramServer() as heard_by_a, ScriptedDeepgramServer() as heard_by_b:
        prefix = store.keys.prefix
        full = bridge_env(redis_url, prefix, heard_by_a.url, BRIDGE_MAX_CALLS="1", BRIDGE_PUBLIC_URL="")
        spare = bridge_env(redis_url, prefix, heard_by_b.url, BRIDGE_PUBLIC_URL="")
        async with BridgeProcess(tmp_path / "a", full) as a, BridgeProcess(tmp_path / "b", spare) as b:
            # A carries its one call, reached directly.
            async with TwilioStream(f"{a.ws}/twilio/media", "CA" + "0a" * 16, auth_token=TWILIO_TOKEN) as on_a:
                await send(on_a, speech(0.5, 1))
                with Nginx(tmp_path / "front", [a.port, b.port]) as front:
                    # Round robin sends every other upgrade to A first: each must still get a stream.
                    for i in range(4):
                        sid = "CA" + f"{i:02d}" * 16
                        async with TwilioStream(f"{front.ws}/twilio/media", sid, auth_token=TWILIO_TOKEN) as call:
                            await send(call, speech(0.5, 10 + i))
                            await call.stop()
                            assert call.ws is not None and call.ws.close_code == 1000
                await on_a.stop()
            refused = await a.metric("bridge_admission_refused_total", where="media", reason="capacity")
    assert len(heard_by_a.connections) == 1  # A took nothing beyond its one call
    assert len(heard_by_b.connections) == 4
    assert refused >= 1  # nginx did ask A, and went on to B
