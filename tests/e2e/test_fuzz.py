"""Property-based fuzzing of the running bridge (real app, real sockets, real Redis; issue #10).

Hypothesis generates Twilio Media Streams sessions (well-formed, half-formed and garbage frames,
valid and hostile SIDs, leaps in timestamps), Twilio webhook forms (signed, so they reach the parsers)
and subscriber requests (paths, resume positions, tokens, formats). Whatever comes in:

- no HTTP 5xx, no WebSocket close 1011, no exception logged;
- the process keeps serving, and once the sockets are gone every call has ended (no session left).

The examples are derandomized, so a run is reproducible; raise ``FUZZ_EXAMPLES`` to search longer.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
import string
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from bridge.live import auth as live_auth
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer
from bridge.twilio.auth import SIGNATURE_HEADER, sign, stream_token
from tests.support.calls import poll

TOKEN = "fuzz-token"
SECRET = "fuzz-secret"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)  # fmt: skip

HEX = "0123456789abcdef"
#: What a client can put in a header value (HTTP clients refuse control characters and edge spaces).
HEADER_CHARS = string.ascii_letters + string.digits + string.punctuation
VALID_CALLS = ["CA" + c * 32 for c in "abc"]  # few, so streams reuse CallSids and overlap ended calls
HOSTILE = ["", "../x", "/tmp/x", "sub/dir/x", VALID_CALLS[0] + ":finals", "CA" + "0" * 31 + "\x00",
           "CA\n" + "1" * 31, "ca" + "2" * 32, "CA" + "é" * 32, "*", "CA" + "3" * 320]  # fmt: skip


def mostly(usual: st.SearchStrategy[Any], other: st.SearchStrategy[Any], one_in: int = 5) -> st.SearchStrategy[Any]:
    """``usual``, except one draw in ``one_in``: well-formed sessions with one thing wrong reach deeper."""
    return st.integers(0, one_in - 1).flatmap(lambda n: other if n == 0 else usual)


def sid(prefix: str) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(HEX, min_size=32, max_size=32).map(lambda h: prefix + h),
        st.sampled_from(HOSTILE),
        st.text(max_size=40),
    )


call_sids = mostly(st.sampled_from(VALID_CALLS), sid("CA"), one_in=3)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


@st.composite
def media_session(draw: st.DrawFn) -> tuple[list[str | bytes], str]:
    """(frames, call sid): usually connected + start + media…, often broken somewhere."""
    call_sid = draw(call_sids)
    stream_sid = draw(mostly(st.text(HEX, min_size=32, max_size=32).map(lambda h: "MZ" + h), sid("MZ")))
    tracks = draw(mostly(st.sampled_from([["inbound"], ["inbound", "outbound"], ["outbound"]]),
                         st.lists(st.sampled_from(["inbound", "outbound", "both", "x"]), max_size=3)))  # fmt: skip
    token = draw(mostly(st.just(stream_token(TOKEN, call_sid)), st.text(max_size=70), one_in=8))
    media_format = draw(mostly(st.just({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}),
                               st.sampled_from([{"encoding": "audio/x-l16", "sampleRate": 16000}, {}])))  # fmt: skip
    account_sid = draw(mostly(st.just("AC" + "0" * 32), sid("AC"), one_in=8))
    frames: list[str | bytes] = []
    if draw(st.integers(0, 15)):
        frames.append(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
    start: dict[str, Any] = {
        "event": "start", "sequenceNumber": "1", "streamSid": stream_sid,
        "start": {"accountSid": account_sid, "streamSid": stream_sid, "callSid": call_sid, "tracks": tracks,
                  "customParameters": {"token": token}, "mediaFormat": media_format},
    }  # fmt: skip
    if draw(st.integers(0, 15)):
        frames.append(json.dumps(start))
    clock = 0
    for n in range(draw(st.integers(0, 30))):
        kind = draw(st.sampled_from(["media"] * 6 + ["leap", "dtmf", "mark", "stop", "junk", "binary", "json"]))
        seq = str(n + 2)
        if kind in ("media", "leap"):
            clock += draw(st.integers(0, 10**9)) if kind == "leap" else 20
            payload = draw(st.one_of(st.binary(min_size=1, max_size=400).map(lambda b: base64.b64encode(b).decode()),
                                     st.text(max_size=20)))  # fmt: skip
            timestamp = draw(st.one_of(st.just(str(clock)), st.integers().map(str), st.text(max_size=8)))
            track = draw(st.sampled_from(["inbound", "outbound", "x"]))
            media = {"track": track, "chunk": seq, "timestamp": timestamp, "payload": payload}
            frames.append(json.dumps({"event": "media", "sequenceNumber": seq, "streamSid": stream_sid,
                                      "media": media}))
        elif kind == "dtmf":
            frames.append(json.dumps({"event": "dtmf", "sequenceNumber": seq, "streamSid": stream_sid,
                                      "dtmf": {"digit": draw(st.text(max_size=3)), "track": "inbound_track"}}))
        elif kind == "mark":
            frames.append(json.dumps({"event": "mark", "sequenceNumber": seq, "streamSid": stream_sid,
                                      "mark": {"name": draw(st.text(max_size=30))}}))
        elif kind == "stop":
            frames.append(json.dumps({"event": "stop", "sequenceNumber": seq, "streamSid": stream_sid,
                                      "stop": {"accountSid": "AC" + "0" * 32, "callSid": draw(call_sids)}}))
        elif kind == "junk":
            frames.append(draw(st.text(max_size=200)))
        elif kind == "binary":
            frames.append(draw(st.binary(max_size=64)))
        else:
            frames.append(json.dumps(draw(json_values)))
    return frames, call_sid


RESUME_EDGES = ["0", "1", "99999999999999999999", "9" * 15, "9" * 16, "-1", "+1", "1e3", "٣", " 7", "0x1", ""]
FORM_FIELDS = ["AccountSid", "CallSid", "StreamSid", "RecordingSid", "CallStatus", "StreamEvent", "RecordingStatus",
               "RecordingUrl", "RecordingChannels", "RecordingDuration", "CallDuration", "From", "To", "StreamError",
               "Timestamp", "SequenceNumber", "RecordingTrack"]  # fmt: skip
FORM_VALUES = st.one_of(
    st.text(max_size=40), sid("CA"), sid("AC"), sid("MZ"), sid("RE"), st.integers().map(str),
    st.sampled_from(["completed", "in-progress", "ringing", "stream-started", "stream-error", "absent",
                     "https://api.twilio.com/2010-04-01/Accounts/AC/Recordings/RE", "http://api.twilio.com/x",
                     "https://127.0.0.1/x", "2", "1", "3", "-1", "both", "outbound"]),
)  # fmt: skip
WEBHOOKS = ["/twilio/voice", "/twilio/status", "/twilio/stream-status", "/twilio/recording"]


@st.composite
def webhook_post(draw: st.DrawFn) -> tuple[str, dict[str, str], bool]:
    path = draw(st.sampled_from(WEBHOOKS))
    form = draw(st.dictionaries(st.one_of(st.sampled_from(FORM_FIELDS), st.text(max_size=12)), FORM_VALUES,
                                max_size=10))  # fmt: skip
    if draw(st.integers(0, 3)):  # mostly a complete, well-shaped base so the handlers run to the end
        base = {"AccountSid": "AC" + "0" * 32, "CallSid": draw(st.sampled_from(VALID_CALLS)),
                "StreamSid": "MZ" + "d" * 32, "RecordingSid": "RE" + "e" * 32}  # fmt: skip
        form = {**base, **form}
    return path, form, draw(st.integers(0, 9)) > 0


@st.composite
def subscriber_request(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, str]]:
    call = draw(mostly(st.just(VALID_CALLS[0]), call_sids, one_in=2))  # VALID_CALLS[0] is a stored call
    path = draw(st.sampled_from(["/calls", "/calls/{}", "/calls/{}/transcript", "/calls/{}/quality",
                                 "/calls/{}/events", "/calls/{}/live"] + ["/calls/{}/events", "/calls/{}/live"] * 2))
    path = path.format(quote(call, safe=""))
    params = draw(st.dictionaries(
        st.sampled_from(["format", "source", "limit", "active", "token"]),
        st.one_of(st.text(max_size=25), st.integers().map(str), st.sampled_from(
            ["json", "text", "batch", "live", "true", "0", "-1", "99999999999999999999"])),
        max_size=3,
    ))  # fmt: skip
    if draw(st.booleans()):  # resume positions: the edges first
        params["after"] = draw(mostly(st.sampled_from(RESUME_EDGES), st.one_of(st.text(max_size=25),
                                                                                 st.integers().map(str))))
    headers: dict[str, str] = {}
    if draw(st.booleans()):
        params["token"] = draw(st.sampled_from(["v1.ü.ß", "ünïcödé", live_auth.mint(SECRET, ["*"], 600)]))
    token = draw(mostly(st.just("all"), st.sampled_from(["none", "one", "expired", "garbage", "v1.x.y"]), one_in=2))
    if token != "none":
        headers["authorization"] = "Bearer " + {
            "all": live_auth.mint(SECRET, ["*"], 600),
            "one": live_auth.mint(SECRET, [VALID_CALLS[0]], 600),
            "expired": live_auth.mint(SECRET, ["*"], -10),
            "garbage": draw(st.text(HEADER_CHARS, min_size=1, max_size=40)),
        }.get(token, token)
    if draw(st.booleans()):
        edges = st.sampled_from([e for e in RESUME_EDGES if e and e == e.strip() and e.isascii()])
        headers["last-event-id"] = draw(mostly(edges, st.text(HEADER_CHARS, min_size=1, max_size=25)))
    return path, params, headers


def _bad_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.exc_info or r.levelno >= logging.CRITICAL]


@pytest.fixture
def bridge_settings(redis_url: str, redis_prefix: str, tmp_path: Path, scripted: ScriptedDeepgramServer) -> Settings:
    return dataclasses.replace(
        Settings(), port=0, redis_url=redis_url, redis_prefix=redis_prefix, twilio_auth_token=TOKEN,
        recording_dir=tmp_path / "rec", recognizer="deepgram", recognizer_url=scripted.url,
        recognizer_api_key="scripted", subscriber_secret=SECRET, media_start_timeout=2.0, media_idle_timeout=2.0,
        admission_lag_ms=0,  # the fuzzing clients block this very loop: its lag says nothing about the bridge
    )  # fmt: skip


async def _all_calls_ended(app: Any) -> None:
    async def none_left() -> bool:
        return not app.state.calls.sessions

    await poll(none_left, "every fuzzed call to end", seconds=60)
    assert app.state.metrics.active_calls._value.get() == 0


async def test_fuzzed_media_streams_never_crash_the_bridge_or_leave_a_call(
    bridge_settings: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO)
    closes: list[int] = []
    async with running_bridge(bridge_settings) as (app, http):
        url = http.replace("http://", "ws://") + "/twilio/media"

        @FUZZ
        @given(media_session())
        def play(session: tuple[list[str | bytes], str]) -> None:
            frames, _call = session
            with connect(url, additional_headers={SIGNATURE_HEADER: sign(TOKEN, url)}, open_timeout=10) as ws:
                try:
                    for frame in frames:
                        ws.send(frame)
                    ws.recv(timeout=0.05)
                except (ConnectionClosed, TimeoutError):
                    pass
                code = ws.protocol.close_code
            if code is not None:
                closes.append(code)
            assert code not in (1011, 1006), (code, frames)

        await asyncio.to_thread(play)
        await _all_calls_ended(app)
        async with httpx.AsyncClient(base_url=http) as client:
            assert (await client.get("/healthz")).status_code == 200
    assert closes and set(closes) <= {1000, 1003, 1007, 1008, 1009}
    assert _bad_records(caplog) == []
    recordings = bridge_settings.recording_dir.resolve()
    assert [p for p in tmp_path.rglob("*.wav") if p.parent.resolve() != recordings] == []


async def test_fuzzed_webhook_forms_get_4xx_or_success_never_5xx(
    bridge_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(bridge_settings) as (app, http):

        @FUZZ
        @given(webhook_post())
        def post(request: tuple[str, dict[str, str], bool]) -> None:
            path, form, signed = request
            url = http + path
            headers = {"content-type": "application/x-www-form-urlencoded",
                       SIGNATURE_HEADER: sign(TOKEN, url, form) if signed else "x"}  # fmt: skip
            r = httpx.post(url, content=urlencode(form), headers=headers, timeout=10)
            assert r.status_code in (200, 204, 400, 403), (r.status_code, r.text, path, form)

        await asyncio.to_thread(post)
        await _all_calls_ended(app)
    assert _bad_records(caplog) == []


async def test_fuzzed_subscriber_requests_get_clean_answers(
    bridge_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_bridge(bridge_settings) as (app, http):
        store = app.state.store
        await store.call_started(VALID_CALLS[0], stream_sid="MZ" + "d" * 32, tracks=["inbound"], started_at=1.0)
        await store.call_ended(VALID_CALLS[0], ended_at=2.0, reason="stop")
        ws_base = http.replace("http://", "ws://")

        @FUZZ
        @given(subscriber_request())
        def get(request: tuple[str, dict[str, str], dict[str, str]]) -> None:
            path, params, headers = request
            if path.endswith("/live"):
                query = urlencode(params)
                try:
                    with connect(f"{ws_base}{path}?{query}", additional_headers=headers, open_timeout=10) as ws:
                        try:
                            while True:
                                ws.recv(timeout=1)
                        except ConnectionClosed:
                            pass
                        code = ws.protocol.close_code
                except InvalidStatus as exc:  # refused before the upgrade (e.g. a path that does not route)
                    assert exc.response.status_code < 500, (path, params)
                    return
                assert code in (1000, 4400, 4401, 4403, 4404), (code, path, params, headers)
                return
            with httpx.stream("GET", http + path, params=params, headers=headers, timeout=10) as r:
                assert r.status_code < 500, (r.status_code, path, params, headers)
                if r.status_code == 200 and path.endswith("/events"):  # the stored call: snapshot, then its end
                    body = r.read()
                    assert b"event: call_ended" in body, (body, path, params, headers)

        await asyncio.to_thread(get)
        await _all_calls_ended(app)
    assert _bad_records(caplog) == []
