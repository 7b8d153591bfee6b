"""Tried as a QSA would: a caller reads Visa's test card number, its expiry and security code through a
running ``bridge serve`` (embedded recognizer) and ``bridge worker`` (Whisper), and nothing either
process writes or sends keeps a trace of them: live events (partials included), every Redis key of
the call, the batch JSON file, the transcript exports, both processes' logs. The recording served
by ``GET /calls/{sid}/recording`` has the caller's card turns silent, the rest of the caller's
channel as it was, and the agent's channel byte for byte."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import numpy as np
import websockets

from bridge import events
from bridge.audio import MULAW_SILENCE, mulaw_to_float, read_wav
from bridge.live import auth as live_auth
from bridge.store import Store, client_from_url
from bridge.twilio.replay import replay
from tests.support import FIXTURES
from tests.support.bridges import TWILIO_TOKEN, BridgeProcess, worker_process

CALL = FIXTURES / "calls" / "card_call.wav"
SECRET = "redaction-subscriber-secret"
CALL_SID = "CA" + "c4" * 16

#: What the caller says that must not survive anywhere, written or spoken.
_TOKENS = re.compile(r"[a-z0-9/']+")
#: Clock times (subtitle cues 00:00:24.737, log lines 06:13:26,737) are not speech.
_CUE_TIMES = re.compile(r"\d{2}:\d{2}:\d{2}[.,]\d{3}")
_DIGIT_TRACES = ("4111", "1111")
_EXACT_TRACES = {"0928", "09/28", "9/28", "928", "737"}
_PHRASES = ("one one one", "four one one", "oh nine", "twenty eight", "seven three seven")


def traces(text: str) -> list[str]:
    """Pieces of the card number, expiry or CVV in ``text`` (digits or number words)."""
    text = _CUE_TIMES.sub(" ", text)
    words = _TOKENS.findall(text.lower().replace("-", " ").replace(",", " "))
    found = [w for w in words if any(t in w for t in _DIGIT_TRACES) or w in _EXACT_TRACES]
    joined = " " + " ".join(words) + " "
    return found + [p for p in _PHRASES if f" {p} " in joined]


def strings(value: Any) -> list[str]:
    """Every string inside a stored value (JSON walked; numbers are times and counts, not speech)."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    if isinstance(value, str):
        try:
            value = msgspec.json.decode(value)
        except msgspec.DecodeError:
            return [value]
        if isinstance(value, str):
            return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in strings(k) + strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


async def _redis_strings(redis_url: str, prefix: str) -> dict[str, list[str]]:
    """Every key of the bridge (SCAN), its value dumped as strings."""
    client = client_from_url(redis_url)
    out: dict[str, list[str]] = {}
    try:
        async for raw_key in client.scan_iter(match=f"{prefix}:*", count=500):
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            kind = await client.type(key)
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if kind == "string":
                values: list[Any] = [await client.get(key)]
            elif kind == "hash":
                values = [x for kv in (await client.hgetall(key)).items() for x in kv]
            elif kind == "list":
                values = list(await client.lrange(key, 0, -1))
            elif kind == "zset":
                values = [m for m, _ in await client.zrange(key, 0, -1, withscores=True)]
            elif kind == "stream":
                values = [x for _, fields in await client.xrange(key) for kv in fields.items() for x in kv]
            else:
                values = [await client.dump(key)]
            out[key] = [s for v in values for s in strings(v)]
    finally:
        await client.aclose()
    return out


async def _subscribe(ws_base: str, token: str, received: list[events.LiveEvent]) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    async with websockets.connect(f"{ws_base}/calls/{CALL_SID}/live", additional_headers=headers) as sub:
        async for raw in sub:
            ev = events.decode(raw)
            received.append(ev)
            if isinstance(ev, events.CallEnded):
                return


def _loud(channel: bytes) -> np.ndarray:
    return np.abs(mulaw_to_float(np.frombuffer(channel, dtype=np.uint8))) > 0.02


async def test_a_card_read_on_a_call_leaves_no_trace_and_is_silent_in_the_recording(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    env = {"REDIS_URL": redis_url, "BRIDGE_REDIS_PREFIX": redis_prefix, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
           "BRIDGE_RECOGNIZER": "embedded", "BRIDGE_SUBSCRIBER_SECRET": SECRET, "BRIDGE_LOG_LEVEL": "debug",
           "BRIDGE_RECORDING_DIR": str(tmp_path / "recordings"), "BRIDGE_KEEP_UNREDACTED": "true"}  # fmt: skip
    token = live_auth.mint(SECRET, [CALL_SID], 3600)
    auth = {"Authorization": f"Bearer {token}"}
    bridge = BridgeProcess(tmp_path / "bridge", env)
    worker = worker_process(tmp_path / "worker", env, "--engine", "whisper", "--model", "base")
    received: list[events.LiveEvent] = []
    store: Store | None = None
    try:
        async with bridge, httpx.AsyncClient(base_url=bridge.url, timeout=30, headers=auth) as client:
            player = asyncio.create_task(replay(CALL, url=f"{bridge.ws}/twilio/media", auth_token=TWILIO_TOKEN,
                                                call_sid=CALL_SID, speed=1.0))  # fmt: skip
            for _ in range(500):
                if (await client.get(f"/calls/{CALL_SID}")).status_code == 200:
                    break
                await asyncio.sleep(0.02)
            await asyncio.wait_for(_subscribe(bridge.ws, token, received), timeout=150)
            await player
            # Before the batch pass: the recording is not served (it still holds the card in clear).
            assert (await client.get(f"/calls/{CALL_SID}/recording")).status_code == 409
            assert (await client.get(f"/calls/{CALL_SID}/recording", headers={"Authorization": ""})).status_code == 401
            async with worker:
                batch = None
                for _ in range(1500):
                    r = await client.get(f"/calls/{CALL_SID}/transcript", params={"source": "batch"})
                    if r.status_code == 200:
                        batch = r.json()
                        break
                    await asyncio.sleep(0.1)
                assert batch is not None, f"no batch transcript:\n{worker.log()}"
            exports = [
                (await client.get(f"/calls/{CALL_SID}/transcript", params=p)).text
                for p in ({"format": "json"}, {"format": "text"}, {"format": "vtt"}, {"format": "srt"},
                          {"source": "batch", "format": "json"}, {"source": "batch", "format": "text"},
                          {"source": "batch", "format": "vtt"}, {"source": "batch", "format": "srt"})
            ]  # fmt: skip
            compliance = await client.get(f"/calls/{CALL_SID}/compliance")
            assert compliance.status_code == 200, compliance.text
            exports.append(compliance.text)
            served = await client.get(f"/calls/{CALL_SID}/recording")
            assert served.status_code == 200 and served.headers["content-type"] == "audio/wav"
            stored = await _redis_strings(redis_url, redis_prefix)
            store = Store(client_from_url(redis_url), prefix=redis_prefix, retention_seconds=3600)
            spans = await store.redactions(CALL_SID)
    finally:
        bridge.stop()
        worker.stop()
        cleanup = client_from_url(redis_url)
        keys = [k async for k in cleanup.scan_iter(match=f"{redis_prefix}:*", count=500)]
        if keys:
            await cleanup.delete(*keys)
        await cleanup.aclose()
        if store is not None:
            await store.close()

    # The number was heard and masked (else this test would prove nothing).
    finals = [e for e in received if isinstance(e, events.Final)]
    partials = [e for e in received if isinstance(e, events.Partial)]
    assert any("[card number]" in f.text for f in finals), [f.text for f in finals]
    assert partials, "no partial reached the subscriber"
    assert any("[card number]" in u["text"] for u in batch["utterances"]), batch["utterances"]

    leaks: dict[str, list[str]] = {}
    for i, ev in enumerate(received):
        leaks[f"live event {i}"] = [t for s in strings(events.encode(ev)) for t in traces(s)]
    for key, values in stored.items():
        leaks[f"redis {key}"] = [t for s in values for t in traces(s)]
    recordings = tmp_path / "recordings"
    leaks["batch json"] = [t for s in strings((recordings / f"{CALL_SID}.batch.json").read_bytes())
                           for t in traces(s)]  # fmt: skip
    for i, text in enumerate(exports):
        leaks[f"export {i}"] = [t for s in strings(text) for t in traces(s)]
    leaks["bridge log"] = traces(bridge.log())
    leaks["worker log"] = traces(worker.log())
    assert not {k: v for k, v in leaks.items() if v}, "card data left in the clear"
    assert any(k.endswith(":batch") for k in stored) and any(k.endswith(":redactions") for k in stored)

    # The recording: caller's card turns silent, the rest of the caller's channel intact, the agent's untouched.
    original = read_wav(recordings / f"{CALL_SID}.unredacted.wav")
    redacted = read_wav(recordings / f"{CALL_SID}.wav")
    assert served.content == (recordings / f"{CALL_SID}.wav").read_bytes()
    assert redacted.channel_bytes(1) == original.channel_bytes(1)
    caller, caller_after = original.channel_bytes(0), redacted.channel_bytes(0)
    ref = json.loads((FIXTURES / "calls" / "card_call.json").read_text())
    assert spans and {s.track for s in spans} == {"inbound"}
    reported = json.loads(exports[-1])["redactions"]
    assert {(r["track"], r["kind"]) for r in reported} == {(s.track, s.kind) for s in spans}
    outside = np.ones(len(caller), dtype=bool)
    for s in spans:
        outside[int(s.start * 8000) : int(np.ceil(s.end * 8000))] = False
    before, after = np.frombuffer(caller, np.uint8), np.frombuffer(caller_after, np.uint8)
    assert (before[outside] == after[outside]).all()  # not a byte changed outside the stored spans
    loud = _loud(caller)
    silent = np.frombuffer(caller_after, dtype=np.uint8) == MULAW_SILENCE
    for turn in ref["turns"]:
        if turn["track"] != "inbound":
            continue
        span = slice(round(turn["start"] * 8000), round(turn["end"] * 8000))
        speech = loud[span]
        if turn.get("sensitive"):
            assert silent[span][speech].all(), f"{turn['sensitive']} still audible"
        else:
            kept = np.frombuffer(caller_after, np.uint8)[span] == np.frombuffer(caller, np.uint8)[span]
            assert kept[speech].mean() > 0.95, f"caller turn {turn['text']!r} damaged"


async def test_a_card_split_across_two_finals_never_reaches_redis_or_a_subscriber_in_clear(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """The trap of live redaction: a recognizer ends a final in the middle of the number. Each window of
    the scripted recognizer is one final, its partials growing word by word."""
    import dataclasses

    from bridge.server import running_bridge
    from bridge.settings import Settings
    from bridge.testing import ScriptedDeepgramServer, TwilioStream
    from tests.support.calls import send, speech
    from tests.support.capture import until

    sid = "CA" + "5b" * 16
    script = ["my card is", "4111 1111", "1111 1111", "thanks bye"]
    async with ScriptedDeepgramServer(script=script, partial_seconds=0.1) as scripted:
        settings = dataclasses.replace(
            Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TWILIO_TOKEN,
            recording_dir=tmp_path, recognizer="deepgram", recognizer_url=scripted.url, recognizer_api_key="k",
        )  # fmt: skip
        received: list[events.LiveEvent] = []
        async with running_bridge(settings) as (_app, http):
            ws = http.replace("http://", "ws://")
            async with TwilioStream(f"{ws}/twilio/media", sid, auth_token=TWILIO_TOKEN) as stream:
                # The call record is written as the bridge handles `start`: subscribe once it exists
                # (before, the subscription is refused 4404 unknown call).
                await until(lambda: _app.state.store.get_call(sid))
                async with websockets.connect(f"{ws}/calls/{sid}/live") as sub:
                    await send(stream, speech(4.0, 5))
                    await stream.stop()
                    async for raw in sub:
                        received.append(events.decode(raw))
                        if isinstance(received[-1], events.CallEnded):
                            break
            stored = await _redis_strings(redis_url, redis_prefix)
    cleanup = client_from_url(redis_url)
    keys = [k async for k in cleanup.scan_iter(match=f"{redis_prefix}:*", count=500)]
    if keys:
        await cleanup.delete(*keys)
    await cleanup.aclose()

    finals = [e.text for e in received if isinstance(e, events.Final)]
    assert finals == ["my card is", "[card number]", "[card number]", "thanks bye"]
    partials = [e.text for e in received if isinstance(e, events.Partial)]
    assert "my card is" in partials and "thanks bye" in partials  # partials did flow
    shown = [s for e in received for s in strings(events.encode(e))] + [s for v in stored.values() for s in v]
    assert not [s for s in shown if "1111" in s or "4111" in s]
