"""Replay a WAV as a signed Twilio Media Stream into a real bridge socket (speed 0)."""

from __future__ import annotations

import asyncio
import audioop
import math
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from bridge import cli
from bridge.audio import WavError, to_twilio_mulaw
from bridge.settings import Settings
from bridge.twilio import replay as rp
from tests.support import SHORT_CALL
from tests.twilio.conftest import AUTH_TOKEN, Bridge, make_app, serve


def _channels_of_fixture() -> list[bytes]:
    """Per-channel mu-law bytes of the fixture, read independently of the code under test."""
    data = SHORT_CALL.read_bytes()
    pos = data.index(b"data")
    (size,) = struct.unpack_from("<I", data, pos + 4)
    body = data[pos + 8 : pos + 8 + size]
    return [body[0::2], body[1::2]]


async def test_replay_short_call_both_tracks(bridge: Bridge) -> None:
    sends: list[tuple[str, int]] = []

    async def on_frame(track: str, timestamp_ms: int, sent_at: float) -> None:
        sends.append((track, timestamp_ms))

    result = await rp.replay(
        SHORT_CALL,
        url=bridge.ws + "/twilio/media",
        auth_token=AUTH_TOKEN,
        speed=0,
        custom_parameters={"From": "+15550100001"},
        on_frame=on_frame,
    )
    handler = bridge.calls.handlers[0]
    await asyncio.wait_for(handler.stopped.wait(), timeout=5)

    inbound, outbound = _channels_of_fixture()
    frames = math.ceil(len(inbound) / 160)
    assert result.frames_sent == {"inbound": frames, "outbound": frames}
    assert result.duration == pytest.approx(frames * 0.02)
    assert result.call_sid.startswith("CA") and len(result.call_sid) == 34
    assert result.stream_sid.startswith("MZ") and len(result.stream_sid) == 34

    [start] = bridge.calls.starts
    assert start.start.call_sid == result.call_sid
    assert start.start.stream_sid == result.stream_sid
    assert start.start.tracks == ["inbound", "outbound"]
    assert start.start.custom_parameters["From"] == "+15550100001"

    for track, original in (("inbound", inbound), ("outbound", outbound)):
        got = handler.media(track)
        assert [ts for ts, _ in got] == [i * 20 for i in range(frames)]
        assert all(len(p) == 160 for _, p in got)
        audio = b"".join(p for _, p in got)
        assert audio[: len(original)] == original  # untouched: the fixture is already mu-law/8000
        assert set(audio[len(original) :]) <= {0xFF}  # last frame padded with mu-law silence
    assert handler.events[-1] == ("stop", True, "twilio stop")
    # both tracks interleaved at the same timestamp, in order
    assert sends[:4] == [("inbound", 0), ("outbound", 0), ("inbound", 20), ("outbound", 20)]
    assert len(sends) == 2 * frames


async def test_replay_inbound_only(bridge: Bridge) -> None:
    result = await rp.replay(
        SHORT_CALL,
        url=bridge.ws + "/twilio/media",
        auth_token=AUTH_TOKEN,
        both_tracks=False,
        speed=0,
        call_sid="CA" + "ab" * 16,
    )
    assert result.call_sid == "CA" + "ab" * 16
    assert set(result.frames_sent) == {"inbound"}
    assert bridge.calls.starts[0].start.tracks == ["inbound"]
    assert bridge.calls.handlers[0].media("outbound") == []


async def test_replay_with_wrong_token_is_refused(bridge: Bridge) -> None:
    with pytest.raises(rp.ReplayError, match="HTTP 403"):
        await rp.replay(SHORT_CALL, url=bridge.ws + "/twilio/media", auth_token="not-the-token", speed=0)
    assert bridge.calls.starts == []


async def test_replay_reports_a_violation_close() -> None:
    """A bridge that closes mid-stream surfaces as a ReplayError with its code and reason."""
    settings = Settings(twilio_auth_token=AUTH_TOKEN, max_frame_bytes=200)  # start frame is bigger
    async with serve(make_app(settings)) as bridge:
        with pytest.raises(rp.ReplayError, match="1009"):
            await rp.replay(SHORT_CALL, url=bridge.ws + "/twilio/media", auth_token=AUTH_TOKEN, speed=0)


def _write_pcm(path: Path, samples: np.ndarray, rate: int, width: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        ints = (samples * 0.5 * (2 ** (8 * width - 1) - 1)).astype("<i4")
        if width == 1:
            raw = (ints + 128).astype("u1").tobytes()  # 8-bit WAV is unsigned
        else:  # little-endian two's complement: keep the low ``width`` bytes of each int32
            raw = ints.astype("<i4").view("u1").reshape(-1, 4)[:, :width].tobytes()
        w.writeframes(raw)


def _tone(rate: int, seconds: float, channels: int) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)], axis=1)


@pytest.mark.parametrize(
    ("rate", "width", "channels"), [(16000, 2, 1), (44100, 2, 2), (8000, 1, 1), (22050, 3, 2), (48000, 4, 1)]
)
def test_read_wav_pcm_any_rate(tmp_path: Path, rate: int, width: int, channels: int) -> None:
    path = tmp_path / "tone.wav"
    _write_pcm(path, _tone(rate, 0.5, channels), rate, width)
    audio = to_twilio_mulaw(path)
    assert len(audio) == channels
    for ch in audio:
        assert abs(len(ch) - 4000) <= 2  # 0.5 s at 8 kHz, one byte per sample
        lin = np.frombuffer(audioop.ulaw2lin(ch, 2), dtype="<i2").astype(float)
        rms = float(np.sqrt(np.mean(lin[100:-100] ** 2)))
        assert 0.25 * 32767 * 0.5 < rms * math.sqrt(2) < 0.75 * 32767  # the tone survived at ~half scale


def _write_g711(path: Path, fmt: int, payload: bytes, channels: int, *, extensible: bool = False) -> None:
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt_body = struct.pack("<HHIIHHHHI", 0xFFFE, channels, 8000, 8000 * channels, channels, 8, 22, 8, 0)
        fmt_body += struct.pack("<H", fmt) + guid_tail
    else:
        fmt_body = struct.pack("<HHIIHHH", fmt, channels, 8000, 8000 * channels, channels, 8, 0)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_body)) + fmt_body
    body += b"data" + struct.pack("<I", len(payload)) + payload + (b"\x00" if len(payload) % 2 else b"")
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_read_wav_alaw_and_extensible_mulaw(tmp_path: Path) -> None:
    pcm = (_tone(8000, 0.25, 1)[:, 0] * 8000).astype("<i2").tobytes()
    alaw = tmp_path / "alaw.wav"
    _write_g711(alaw, 6, audioop.lin2alaw(pcm, 2), 1)
    got = to_twilio_mulaw(alaw)[0]
    expected = audioop.lin2ulaw(audioop.alaw2lin(audioop.lin2alaw(pcm, 2), 2), 2)
    assert got == expected

    mulaw = tmp_path / "mulaw_ext.wav"
    payload = bytes(range(201))  # odd length: exercises the RIFF pad byte
    _write_g711(mulaw, 7, payload, 1, extensible=True)
    assert to_twilio_mulaw(mulaw) == [payload]


def test_read_wav_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all")
    with pytest.raises(WavError):
        to_twilio_mulaw(bad)


async def test_cli_main(bridge: Bridge, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "replay",
        str(SHORT_CALL),
        "--url",
        bridge.ws + "/twilio/media",
        "--speed",
        "0",
        "--inbound-only",
        "--call-sid",
        "CA" + "cd" * 16,
        "--auth-token",
        AUTH_TOKEN,
    ]
    code = await asyncio.to_thread(cli.main, argv)
    assert code == 0
    out = capsys.readouterr().out
    assert "CA" + "cd" * 16 in out and "inbound=740" in out
    assert bridge.calls.starts[0].start.call_sid == "CA" + "cd" * 16


def test_cli_main_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.wav"
    assert cli.main(["replay", str(missing), "--url", "ws://127.0.0.1:9/twilio/media", "--auth-token", ""]) == 1
    assert "replay failed" in capsys.readouterr().err


def test_downsampling_filters_out_what_8_khz_cannot_carry(tmp_path: Path) -> None:
    """A 6 kHz tone in a 16 kHz file would alias to 2 kHz without the anti-alias filter."""
    rate = 16000
    t = np.arange(rate // 2) / rate
    path = tmp_path / "high.wav"
    _write_pcm(path, np.sin(2 * np.pi * 6000 * t)[:, None], rate, 2)
    [channel] = to_twilio_mulaw(path)
    lin = np.frombuffer(audioop.ulaw2lin(channel, 2), dtype="<i2").astype(float)
    rms = float(np.sqrt(np.mean(lin[200:-200] ** 2)))
    assert rms < 0.02 * 0.5 * 32767 / math.sqrt(2)
