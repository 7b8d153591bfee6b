"""Stream handoff within one bridge (in this process) and the fake Twilio: the Streams API client, the
fake's streams as the bridge sees them, and the drains that must not hand a call off (four streams
running, ``<Connect><Stream>`` mode). The handoff between two instances is tests/e2e/test_handoff.py."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from starlette.applications import Starlette

from bridge.call.manager import CallManager
from bridge.call.takeover import Recent, Takeover, placement
from bridge.events import LiveGap, ServedSpan
from bridge.server import running_bridge
from bridge.settings import Settings, SettingsError
from bridge.store import Store
from bridge.testing import ScriptedDeepgramServer, TwilioStream
from bridge.testing.twilio import ACCOUNT_SID
from bridge.testing.twilio_api import FakeTwilio
from bridge.twilio.streams_api import StreamsApi, StreamsApiError
from bridge.twilio.webhooks import build_twiml
from tests.support.bridges import metric
from tests.support.capture import close_of, open_capture, started
from tests.support.nginx import free_port

TOKEN = "handoff-unit-token"


@dataclasses.dataclass
class Bridge:
    app: Starlette
    settings: Settings
    twilio: FakeTwilio
    store: Store

    @property
    def calls(self) -> CallManager:
        calls: CallManager = self.app.state.calls
        return calls

    @property
    def media_url(self) -> str:
        return self.settings.public_ws_url + "/twilio/media"


def _settings(redis_url: str, prefix: str, tmp_path: Path, recognizer: str, api: str, **kw: object) -> Settings:
    port = free_port()
    return dataclasses.replace(
        Settings(), port=port, public_url=f"http://127.0.0.1:{port}", redis_url=redis_url, redis_prefix=prefix,
        twilio_account_sid=ACCOUNT_SID, twilio_auth_token=TOKEN, twilio_api_base_url=api, recording_dir=tmp_path,
        recognizer="deepgram", recognizer_url=recognizer, recognizer_api_key="scripted", **kw,
    )  # fmt: skip


@pytest.fixture
async def bridge(
    redis_url: str, store: Store, tmp_path: Path, scripted: ScriptedDeepgramServer, request: pytest.FixtureRequest
) -> AsyncIterator[Bridge]:
    extra: dict[str, object] = getattr(request, "param", {})
    async with FakeTwilio(ACCOUNT_SID, TOKEN) as twilio:
        settings = _settings(redis_url, store.keys.prefix, tmp_path, scripted.url, twilio.base, **extra)
        assert settings.handoff_enabled == (settings.stream_mode == "start")
        async with running_bridge(settings) as (app, _http):
            yield Bridge(app, settings, twilio, store)


def _audio(seconds: float) -> bytes:
    return bytes((i * 37 + (i // 800) * 11) % 251 for i in range(int(seconds * 8000)))


async def _until(predicate: object, what: str) -> None:
    for _ in range(400):
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_fake_twilio_streams_a_call_and_its_api_starts_and_stops_streams(bridge: Bridge) -> None:
    call_sid = "CA" + "e1" * 16
    twiml = build_twiml(bridge.settings, call_sid=call_sid, from_="+15550100001", to="+15550100002",
                        http_base=bridge.settings.public_url, ws_base=bridge.settings.public_ws_url)  # fmt: skip
    call = bridge.twilio.call(call_sid, {"inbound": _audio(6), "outbound": _audio(6)[::-1]})
    first = await call.answer(twiml)
    api = StreamsApi(bridge.settings)
    await call.at(1.0)
    second = await api.start(call_sid, url=bridge.media_url, status_callback=first.status_callback,
                             parameters={**first.parameters, "note": "second"})  # fmt: skip
    await _until(lambda: _streams_open(bridge, call_sid, 2), "the second stream at the bridge")
    # A replacement stream's timestamps restart at 0: its first frame is later in the call.
    (record,) = [r for r in call.history if r.sid == second]
    assert record.parameters["note"] == "second" and record.parameters["token"] == first.parameters["token"]

    async def streaming() -> bool:
        return record.frames_sent >= 5

    await _until(streaming, "the second stream's audio")
    await api.stop(call_sid, second)
    await _until(lambda: _streams_open(bridge, call_sid, 1), "the second stream's stop at the bridge")
    await _until(lambda: _called_back(bridge.twilio, second), "the stream status callback")
    assert ("stream-stopped", second, 204) in bridge.twilio.callbacks
    assert record.first_frame is not None and record.first_frame >= 50 and record.ended == "stopped"

    # Four streams at once at most; a stream of a call that ended cannot be started.
    for _ in range(3):
        await api.start(call_sid, url=bridge.media_url, status_callback="", parameters=first.parameters)
    with pytest.raises(StreamsApiError, match="31940"):
        await api.start(call_sid, url=bridge.media_url, status_callback="", parameters=first.parameters)
    with pytest.raises(StreamsApiError, match="404"):
        await api.start("CA" + "e9" * 16, url=bridge.media_url, status_callback="", parameters={})
    async with asyncio.timeout(30):
        await call.finished()
    with pytest.raises(StreamsApiError, match="21220"):
        await api.start(call_sid, url=bridge.media_url, status_callback="", parameters={})
    info = await bridge.store.get_call(call_sid)
    assert info is not None and len(info.stream_sids) == 5 and info.stream_gaps == []

    wrong = StreamsApi(dataclasses.replace(bridge.settings, twilio_auth_token="not-the-token"))
    with pytest.raises(StreamsApiError, match="401"):
        await wrong.stop(call_sid, second)


async def _streams_open(bridge: Bridge, call_sid: str, n: int) -> bool:
    session = bridge.calls.sessions.get(call_sid)
    return session is not None and len(session.open_streams) == n


async def _called_back(twilio: FakeTwilio, stream_sid: str) -> bool:
    return any(sid == stream_sid for _event, sid, _status in twilio.callbacks)


async def test_a_call_with_four_streams_running_is_not_handed_off_on_drain(bridge: Bridge) -> None:
    call_sid = "CA" + "e2" * 16
    streams = [TwilioStream(bridge.media_url, call_sid, auth_token=TOKEN) for _ in range(4)]
    for stream in streams:
        await stream.__aenter__()
    try:
        for stream in streams:
            await stream.media("inbound", 0, _audio(0.02))
        await _until(lambda: _live(bridge, call_sid, 4), "four live streams")
        await bridge.calls.drain(10)
    finally:
        for stream in streams:
            await stream.__aexit__(None, None, None)
    info = await bridge.store.get_call(call_sid)
    assert info is not None and info.end_reason == "bridge shutdown"
    assert metric(bridge.app.state.metrics.render().decode(), "bridge_stream_handoffs_total", result="limit") == 1
    assert bridge.twilio.requests == []


async def _live(bridge: Bridge, call_sid: str, n: int) -> bool:
    return await bridge.store.live_stream_count(call_sid) == n


@pytest.mark.parametrize("bridge", [{"stream_mode": "connect"}], indirect=True)
async def test_connect_mode_calls_are_not_handed_off_the_drain_waits_for_them(bridge: Bridge) -> None:
    call_sid = "CA" + "e3" * 16
    async with TwilioStream(bridge.media_url, call_sid, auth_token=TOKEN) as stream:
        await stream.media("inbound", 0, _audio(0.02))
        await _until(lambda: _streams_open(bridge, call_sid, 1), "the stream")
        drain = asyncio.create_task(bridge.calls.drain(30))
        await _until(lambda: _draining(bridge), "the drain")
        await stream.media("inbound", 20, _audio(0.02))  # the call goes on while the instance drains
        await stream.stop()
        await drain
    info = await bridge.store.get_call(call_sid)
    assert info is not None and info.end_reason == "twilio stop"  # it ended by itself, not by the drain
    assert metric(bridge.app.state.metrics.render().decode(), "bridge_stream_handoffs_total",
                  result="connect_mode") == 1  # fmt: skip
    assert bridge.twilio.requests == []


async def _draining(bridge: Bridge) -> bool:
    return bridge.calls.draining


def test_a_replacement_stream_is_placed_on_the_call_clock() -> None:
    # On Twilio's 20 ms grid; a drain's cut is the first whole second at least 1 s later.
    assert placement(19.969, Takeover("drain")) == (19.96, 21.0)
    assert placement(19.951, Takeover("recover", 19.2)) == (19.96, 19.96)
    recent = Recent("inbound")
    audio = _audio(3)
    recent.feed("inbound", 0, 8000, audio[:12000])
    recent.feed("outbound", 0, 8000, b"\x00" * 160)  # another track: not looked at
    recent.feed("inbound", 0, 20000, audio[12000:])
    assert recent.find(audio[9600:11200]) == (8000 + 9600) / 8000
    assert recent.find(b"\xff" * 1600) is None  # silence is everywhere: no placement from it


def test_the_other_instances_coverage_ends_where_its_audio_stopped_counting() -> None:
    served = {"inbound": [ServedSpan("deepgram", 0.0, 8.0), ServedSpan("elevenlabs", 8.0, None, True)]}
    gaps = {"inbound": [LiveGap(3.0, 4.0, "catchup"), LiveGap(20.5, 25.0, "closing")]}
    drain = Takeover("drain", served=served, gaps=gaps)
    assert drain.coverage_before("inbound", 21.0) == (
        [ServedSpan("deepgram", 0.0, 8.0), ServedSpan("elevenlabs", 8.0, 21.0, True)],
        [LiveGap(3.0, 4.0, "catchup"), LiveGap(20.5, 21.0, "closing")],
    )
    lost = Takeover("recover", 19.7, served=served, gaps=gaps)
    assert lost.coverage_before("inbound", 20.04)[0][-1] == ServedSpan("elevenlabs", 8.0, 19.7, True)
    assert drain.coverage_before("outbound", 21.0) == ([], [])


def test_handoff_settings_are_checked_at_start_up() -> None:
    env = {"TWILIO_ACCOUNT_SID": ACCOUNT_SID, "TWILIO_AUTH_TOKEN": "t", "BRIDGE_PUBLIC_URL": "https://b.example"}
    assert Settings.from_env(env).handoff_enabled
    assert not Settings.from_env({**env, "BRIDGE_HANDOFF": "false"}).handoff_enabled
    assert not Settings.from_env({**env, "BRIDGE_STREAM_MODE": "connect"}).handoff_enabled
    keyed = Settings.from_env({**env, "TWILIO_API_KEY": "SK1", "TWILIO_API_SECRET": "s"})
    assert keyed.twilio_rest_credentials == ("SK1", "s")
    assert any("handoff" in w for w in Settings.from_env({"TWILIO_AUTH_TOKEN": "t"}).startup_warnings())
    for bad in ({"TWILIO_API_KEY": "SK1"}, {"TWILIO_API_BASE_URL": "ftp://x"}, {"BRIDGE_HANDOFF_SECONDS": "0"}):
        with pytest.raises(SettingsError):
            Settings.from_env({**env, **bad})


@pytest.mark.parametrize("bridge", [{"handoff_seconds": 1.0}], indirect=True)
async def test_a_handoff_no_instance_takes_ends_the_call_as_before(bridge: Bridge) -> None:
    # One instance only: the replacement stream comes back to it, is refused (draining), and fails.
    call_sid = "CA" + "e4" * 16
    twiml = build_twiml(bridge.settings, call_sid=call_sid, from_="+15550100001", to="+15550100002",
                        http_base=bridge.settings.public_url, ws_base=bridge.settings.public_ws_url)  # fmt: skip
    call = bridge.twilio.call(call_sid, {"inbound": _audio(8), "outbound": _audio(8)})
    await call.answer(twiml)
    await _until(lambda: _streams_open(bridge, call_sid, 1), "the stream")
    await call.at(1.0)
    await bridge.calls.drain(10)
    info = await bridge.store.get_call(call_sid)
    assert info is not None and info.status == "ended" and info.end_reason == "bridge shutdown"
    assert metric(bridge.app.state.metrics.render().decode(), "bridge_stream_handoffs_total",
                  result="no_replacement") == 1  # fmt: skip
    _first, replacement = call.history
    assert replacement.ended == "error" and replacement.first_frame is None  # refused before its start
    assert ("stream-error", replacement.sid, 204) in bridge.twilio.callbacks
    # The refused stream never ran: its end starts no recovery (no loop of replacements).
    await bridge.calls.handoff.recover(call_sid, replacement.sid)  # what its stream-error callback ran
    assert metric(bridge.app.state.metrics.render().decode(), "bridge_stream_recoveries_total",
                  result="started") == 0  # fmt: skip
    assert len(call.history) == 2
    await call.aclose()


async def test_a_takeover_stream_of_a_call_with_no_record_is_refused(bridge: Bridge) -> None:
    # Its audio could not be placed on the call's clock: better no transcript than a wrong one.
    call_sid = "CA" + "e5" * 16
    stream = TwilioStream(bridge.media_url, call_sid, auth_token=TOKEN, custom_parameters={"handoff": "drain"})
    async with stream:
        assert stream.ws is not None
        with pytest.raises(websockets.ConnectionClosed) as closed:
            async with asyncio.timeout(10):
                await stream.ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert call_sid not in bridge.calls.sessions and await bridge.store.get_call(call_sid) is None


async def test_a_browser_capture_is_not_a_twilio_call_and_is_not_handed_off(bridge: Bridge) -> None:
    ws = await open_capture(f"http://127.0.0.1:{bridge.settings.port}")
    call_sid = (await started(ws))["call_sid"]
    for i in range(0, 1600, 160):
        await ws.send(_audio(0.2)[i : i + 160])

    async def labelled() -> bool:
        info = await bridge.store.get_call(call_sid)
        return info is not None and info.extra.get("source") == "browser"

    await _until(labelled, "the browser label")
    await bridge.calls.drain(10)
    await ws.send(_audio(0.02))  # the capture notices the drain with its next frame
    assert (await close_of(ws))[0] == 1001
    info = await bridge.store.get_call(call_sid)
    assert info is not None and info.end_reason == "bridge shutdown"
    assert bridge.twilio.requests == []  # Twilio's API was not asked about a call it does not have
