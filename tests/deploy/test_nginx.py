"""Two ``bridge serve`` processes behind Debian's nginx running ``deploy/nginx/bridge-locations.conf`` as is.

One Redis, one Twilio auth token, and a scripted Deepgram-protocol recognizer per instance (its words
are a function of the audio only, so what each instance heard tells exactly which finals it owes).
Three nginx processes include the same rules: ``front`` balances over both instances the way a
deployment does; ``to_a`` and ``to_b`` have one upstream each, to send a request to a chosen instance.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import websockets

from bridge import events
from bridge.store import Store
from bridge.store.jobs import RecordingJob
from bridge.testing import ScriptedDeepgramServer, TwilioStream, scripted_finals
from bridge.twilio.auth import sign
from tests.support.bridges import BridgeProcess, metric
from tests.support.nginx import EXAMPLE, LOCATIONS, NGINX, Nginx, check_config, http_context, prepare_prefix
from tests.support.sse import parse_sse

pytestmark = pytest.mark.skipif(not Path(NGINX).exists(), reason="nginx is not installed (deploy/system-deps.sh)")

TOKEN = "nginx-auth-token"
FORM = {"content-type": "application/x-www-form-urlencoded"}
Row = tuple[str, float, float, str]


@dataclasses.dataclass
class Stack:
    a: BridgeProcess
    b: BridgeProcess
    heard_by_a: ScriptedDeepgramServer
    heard_by_b: ScriptedDeepgramServer
    front: Nginx
    to_a: Nginx
    to_b: Nginx


@pytest.fixture
async def stack(redis_url: str, store: Store, tmp_path: Path) -> AsyncIterator[Stack]:
    async with ScriptedDeepgramServer() as rec_a, ScriptedDeepgramServer() as rec_b:
        env = {"REDIS_URL": redis_url, "BRIDGE_REDIS_PREFIX": store.keys.prefix, "TWILIO_AUTH_TOKEN": TOKEN,
               "BRIDGE_RECOGNIZER": "deepgram", "BRIDGE_RECOGNIZER_API_KEY": "scripted",
               "BRIDGE_PUBLIC_URL": ""}  # fmt: skip
        a = BridgeProcess(tmp_path / "a", {**env, "BRIDGE_RECOGNIZER_URL": rec_a.url})
        b = BridgeProcess(tmp_path / "b", {**env, "BRIDGE_RECOGNIZER_URL": rec_b.url})
        try:
            await asyncio.gather(a.start(), b.start())
            with (
                Nginx(tmp_path / "front", [a.port, b.port]) as front,
                Nginx(tmp_path / "to-a", [a.port]) as to_a,
                Nginx(tmp_path / "to-b", [b.port]) as to_b,
            ):
                yield Stack(a, b, rec_a, rec_b, front, to_a, to_b)
        finally:
            a.stop()
            b.stop()


def _speech(seconds: float, seed: int) -> bytes:
    rnd = random.Random(seed)
    return bytes(rnd.randrange(0, 255) for _ in range(int(seconds * 8000)))


def _expected(track: str, audio: bytes) -> list[Row]:
    return [(track, round(s, 3), round(e, 3), w) for s, e, w in scripted_finals(audio)]


def _rows(finals: list[events.Final]) -> list[Row]:
    return sorted(((f.track, f.start, f.end, f.text) for f in finals), key=lambda r: (r[1], r[0] != "inbound"))


async def _post(base: str, path: str, form: dict[str, str], *, signed_url: str | None = None) -> httpx.Response:
    headers = {**FORM, "X-Twilio-Signature": sign(TOKEN, signed_url or base + path, form)}
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(base + path, content=urlencode(form), headers=headers)


async def _call_exists(base: str, call_sid: str) -> None:
    """Wait (bounded) until the call's record is readable there (subscribers refuse unknown calls)."""
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        for _ in range(1000):
            if (await client.get(f"/calls/{call_sid}")).status_code == 200:
                return
            await asyncio.sleep(0.02)
    raise AssertionError(f"call {call_sid} never appeared at {base}")


async def _ws_subscriber(url: str, out: list[events.LiveEvent], first_final: asyncio.Event | None = None) -> None:
    async with websockets.connect(url) as ws:
        async for raw in ws:
            event = events.decode(raw)
            out.append(event)
            if isinstance(event, events.Final) and first_final is not None:
                first_final.set()
            if isinstance(event, events.CallEnded):
                return


async def _sse_subscriber(url: str, first_final: asyncio.Event) -> list[dict[str, str]]:
    """Frames until ``call_ended``; ``first_final`` is set as soon as a final has come through."""
    buffer = ""
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client, client.stream("GET", url) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        async for chunk in r.aiter_text():
            buffer += chunk
            frames = parse_sse(buffer.rpartition("\n\n")[0])
            if any(f.get("event") == "final" for f in frames):
                first_final.set()
            if any(f.get("event") == "call_ended" for f in frames):
                return frames
    raise AssertionError("the event stream ended before call_ended")


async def test_signed_webhooks_pass_through_nginx_and_the_twiml_points_back_at_it(stack: Stack) -> None:
    call_sid = "CA" + "a1" * 16
    voice = {"AccountSid": "AC" + "0" * 32, "CallSid": call_sid, "From": "+15550100001", "To": "+15550100002",
             "CallStatus": "ringing", "Direction": "inbound"}  # fmt: skip
    response = await _post(stack.front.url, "/twilio/voice", voice)
    assert response.status_code == 200, response.text
    stream = ET.fromstring(response.text).find("Start/Stream")
    assert stream is not None
    # The bridge saw the URL Twilio called (nginx's host and port, scheme), not its own address.
    assert stream.attrib["url"] == f"{stack.front.ws}/twilio/media"
    assert stream.attrib["statusCallback"] == f"{stack.front.url}/twilio/stream-status"

    # Signed for the instance's own address, not the public one: refused.
    forged = await _post(stack.front.url, "/twilio/voice", voice, signed_url=f"{stack.a.url}/twilio/voice")
    assert forged.status_code == 403

    status = {"AccountSid": "AC" + "0" * 32, "CallSid": call_sid, "CallStatus": "in-progress"}
    for target in (stack.to_a, stack.to_b):  # either instance takes any callback
        assert (await _post(target.url, "/twilio/status", status)).status_code == 204
    async with httpx.AsyncClient(base_url=stack.front.url, timeout=5) as client:
        info = (await client.get(f"/calls/{call_sid}")).json()
        assert info["extra"]["call_status"] == "in-progress"
        assert (await client.get("/metrics")).status_code == 403  # scraped per instance, never through nginx
        assert (await client.get("/readyz")).status_code == 200
    assert "bridge_calls_total" in await stack.a.metrics()


async def test_subscribers_on_b_see_every_final_of_a_call_streamed_into_a(stack: Stack, store: Store) -> None:
    call_sid = "CA" + "a2" * 16
    tracks = {"inbound": _speech(4, 1), "outbound": _speech(4, 2)}
    ws_events: list[events.LiveEvent] = []
    async with TwilioStream(f"{stack.to_a.ws}/twilio/media", call_sid, auth_token=TOKEN,
                            tracks=("inbound", "outbound")) as stream:  # fmt: skip
        await _call_exists(stack.to_b.url, call_sid)
        ws_final, sse_final = asyncio.Event(), asyncio.Event()
        ws = asyncio.create_task(_ws_subscriber(f"{stack.to_b.ws}/calls/{call_sid}/live", ws_events, ws_final))
        sse = asyncio.create_task(_sse_subscriber(f"{stack.to_b.url}/calls/{call_sid}/events", sse_final))
        await asyncio.sleep(0.3)  # both subscribed before the first word: what follows is live fan-out
        length = len(tracks["inbound"])
        for i in range(0, length, 160):
            for track, audio in tracks.items():
                await stream.media(track, i // 8, audio[i : i + 160])  # type: ignore[arg-type]
            if i % 1600 == 0:
                await asyncio.sleep(0.01)
        # Live through nginx, not held back until the call is over: finals arrive while it goes on.
        async with asyncio.timeout(30):
            await asyncio.gather(ws_final.wait(), sse_final.wait())
        await stream.stop()
        async with asyncio.timeout(60):
            await ws
            sse_frames = await sse

    expected = sorted(_expected("inbound", tracks["inbound"]) + _expected("outbound", tracks["outbound"]),
                      key=lambda r: (r[1], r[0] != "inbound"))  # fmt: skip
    assert _rows(await store.transcript(call_sid)) == expected
    ws_finals = [e for e in ws_events if isinstance(e, events.Final)]
    assert _rows(ws_finals) == expected and len({f.id for f in ws_finals}) == len(expected)
    assert [f.seq for f in ws_finals] == list(range(1, len(expected) + 1))
    assert any(isinstance(e, events.Partial) for e in ws_events), "no partial crossed from A to B"
    assert isinstance(ws_events[-1], events.CallEnded)
    sse_finals = [events.decode_final(f["data"]) for f in sse_frames if f.get("event") == "final"]
    assert _rows(sse_finals) == expected
    assert [f["id"] for f in sse_frames if f.get("event") == "final"] == [str(f.seq) for f in sse_finals]
    assert sse_frames[-1]["event"] == "call_ended"

    # A carried the call and B only fanned it out.
    assert metric(await stack.a.metrics(), "bridge_calls_total") == 1
    assert metric(await stack.b.metrics(), "bridge_calls_total") == 0
    assert len(stack.heard_by_a.connections) == 2 and stack.heard_by_b.connections == []


async def test_sigterm_of_a_mid_call_drains_it_without_losing_a_final(stack: Stack, store: Store) -> None:
    call_sid = "CA" + "a3" * 16
    audio = _speech(8, 3)
    ws_events: list[events.LiveEvent] = []
    sent = 0

    async def play(stream: TwilioStream) -> None:
        nonlocal sent
        try:
            for i in range(0, len(audio), 160):
                await stream.media("inbound", i // 8, audio[i : i + 160])
                sent = i + 160
                await asyncio.sleep(0.005)
        except websockets.ConnectionClosed:
            pass  # A went away: Twilio would see the stream end here

    async with TwilioStream(f"{stack.to_a.ws}/twilio/media", call_sid, auth_token=TOKEN) as stream:
        await _call_exists(stack.to_b.url, call_sid)
        ws = asyncio.create_task(_ws_subscriber(f"{stack.to_b.ws}/calls/{call_sid}/live", ws_events))
        player = asyncio.create_task(play(stream))
        await stack.heard_by_a.wait_for_audio(int(2.5 * 8000), timeout=30)
        stack.heard_by_a.stall(1.0)  # the last final takes a while: the drain must wait for it
        stack.a.terminate()
        assert await stack.a.wait(60) == 0, stack.a.log()
        async with asyncio.timeout(30):
            await player
            await ws

    (connection,) = stack.heard_by_a.connections
    heard = bytes(connection.audio)
    assert len(heard) >= int(2.5 * 8000) and heard == audio[: len(heard)]
    assert sent >= len(heard) and "CloseStream" in connection.controls
    expected = _expected("inbound", heard)
    assert _rows(await store.transcript(call_sid)) == expected
    ws_finals = [e for e in ws_events if isinstance(e, events.Final)]
    assert _rows(ws_finals) == expected
    assert isinstance(ws_events[-1], events.CallEnded) and ws_events[-1].reason == "bridge shutdown"
    info = await store.get_call(call_sid)
    assert info is not None and info.status == "ended"
    (job,) = [j for _id, j in await _jobs(store) if j.call_sid == call_sid]
    assert job.duration == pytest.approx(len(heard) / 8000, abs=0.05)

    # With A gone, nginx sends what would have gone to A to B.
    voice = {"AccountSid": "AC" + "0" * 32, "CallSid": "CA" + "a4" * 16, "CallStatus": "ringing"}
    for _ in range(4):
        assert (await _post(stack.front.url, "/twilio/voice", voice)).status_code == 200


async def _jobs(store: Store) -> list[tuple[str, RecordingJob]]:
    entries = await store.client.xrange(store.keys.recordings)
    return [(i, RecordingJob.from_fields(f)) for i, f in entries]


def test_the_shipped_example_site_is_valid_nginx(tmp_path: Path) -> None:
    """``nginx -t`` on deploy/nginx/bridge.conf as an operator installs it (certificates made up here)."""
    prepare_prefix(tmp_path)
    (tmp_path / "snippets").mkdir()
    (tmp_path / "snippets" / "bridge-locations.conf").write_text(LOCATIONS.read_text())
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=bridge.example.com",
                    "-days", "1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    site = EXAMPLE.read_text()
    site = site.replace("/etc/ssl/bridge/fullchain.pem", str(cert)).replace("/etc/ssl/bridge/privkey.pem", str(key))
    assert site.count(str(cert)) == 1 and "include snippets/bridge-locations.conf;" in site
    conf = tmp_path / "nginx.conf"  # relative includes resolve against its directory, as in /etc/nginx
    conf.write_text(http_context(site))
    checked = check_config(tmp_path, conf)
    assert checked.returncode == 0, checked.stderr
