"""Replay a WAV file into a running bridge as a faithful, signed Twilio Media Stream.

The only place in the project that transcodes audio: any PCM (8/16/24/32-bit int, 32-bit float),
mu-law or A-law WAV at any rate becomes 8 kHz mono mu-law per channel (channel 0 = inbound/caller,
channel 1 = outbound/agent). Frames are 20 ms / 160 bytes with string ``sequenceNumber``/``chunk``/
``timestamp`` like Twilio's, both tracks interleaved at the same timestamp, paced against a
monotonic clock so long calls do not drift.
"""

from __future__ import annotations

import argparse
import asyncio
import audioop
import base64
import contextlib
import dataclasses
import logging
import secrets
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge import twilio_models as tm
from bridge.twilio_auth import SIGNATURE_HEADER, sign, stream_token

logger = logging.getLogger(__name__)

FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
FRAME_MS = 20
MULAW_SILENCE = 0xFF

_FORMAT_PCM = 1
_FORMAT_FLOAT = 3
_FORMAT_ALAW = 6
_FORMAT_MULAW = 7
_FORMAT_EXTENSIBLE = 0xFFFE

#: Async hook called after each media frame is sent: (track, timestamp_ms, time.monotonic() at send).
FrameHook = Callable[[tm.Track, int, float], Awaitable[None]]


class WavError(ValueError):
    """The file is not a WAV we can read."""


class ReplayError(RuntimeError):
    """The bridge refused or closed the stream before the replay finished."""


@dataclasses.dataclass(frozen=True)
class WavAudio:
    """Decoded WAV: per-channel 8 kHz mu-law bytes."""

    channels: list[bytes]
    source_rate: int
    source_format: int

    @property
    def duration(self) -> float:
        return len(self.channels[0]) / tm.SAMPLE_RATE if self.channels else 0.0


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    call_sid: str
    stream_sid: str
    frames_sent: dict[str, int]
    #: Seconds of audio replayed.
    duration: float
    #: Wall-clock seconds the replay took.
    elapsed: float


def _riff_chunks(data: bytes) -> dict[bytes, bytes]:
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a RIFF/WAVE file")
    chunks: dict[bytes, bytes] = {}
    pos = 12
    while pos + 8 <= len(data):
        cid, size = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8 : pos + 8 + size]
        chunks.setdefault(cid, body)
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if b"fmt " not in chunks or b"data" not in chunks:
        raise WavError("WAV has no fmt or data chunk")
    return chunks


def _to_lin16(raw: bytes, fmt: int, width: int) -> bytes:
    if fmt == _FORMAT_MULAW:
        return audioop.ulaw2lin(raw, 2)
    if fmt == _FORMAT_ALAW:
        return audioop.alaw2lin(raw, 2)
    if fmt == _FORMAT_FLOAT:
        dtype = "<f4" if width == 4 else "<f8"
        samples = np.frombuffer(raw, dtype=dtype)
        return bytes((np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    if fmt == _FORMAT_PCM:
        if width == 1:  # 8-bit WAV is unsigned
            return audioop.lin2lin(audioop.bias(raw, 1, -128), 1, 2)
        if width == 2:
            return raw
        if width in (3, 4):
            return audioop.lin2lin(raw, width, 2)
    raise WavError(f"unsupported WAV encoding (format {fmt}, {width * 8} bits)")


def _lowpass(samples: np.ndarray, rate: int) -> np.ndarray:
    """Anti-alias before downsampling (``audioop.ratecv`` only interpolates): windowed-sinc at 3.6 kHz."""
    taps = 101
    t = np.arange(taps) - (taps - 1) / 2
    kernel = np.sinc(2 * 3600 / rate * t) * np.hamming(taps)
    kernel /= kernel.sum()
    filtered = np.convolve(samples.astype(np.float64), kernel, mode="same")
    return np.clip(np.rint(filtered), -32768, 32767).astype("<i2")


def read_wav(path: Path) -> WavAudio:
    """Read a WAV of any common encoding/rate into per-channel 8 kHz mu-law."""
    chunks = _riff_chunks(path.read_bytes())
    fmt_chunk = chunks[b"fmt "]
    if len(fmt_chunk) < 16:
        raise WavError("fmt chunk too short")
    fmt, nch, rate, _byte_rate, block_align, _bits = struct.unpack_from("<HHIIHH", fmt_chunk)
    if fmt == _FORMAT_EXTENSIBLE:
        if len(fmt_chunk) < 26:
            raise WavError("WAVE_FORMAT_EXTENSIBLE without a sub-format")
        (fmt,) = struct.unpack_from("<H", fmt_chunk, 24)
    if nch < 1 or rate < 1 or block_align < nch:
        raise WavError(f"implausible WAV header: {nch} channels, {rate} Hz, block {block_align}")
    width = block_align // nch
    raw = chunks[b"data"]
    raw = raw[: len(raw) - len(raw) % block_align]

    if fmt == _FORMAT_MULAW and rate == tm.SAMPLE_RATE and width == 1:
        # Already Twilio's format: de-interleave without touching a sample.
        return WavAudio([raw[c::nch] for c in range(nch)], rate, fmt)

    if fmt in (_FORMAT_MULAW, _FORMAT_ALAW) and width != 1:
        raise WavError("G.711 WAV must be 8 bits per sample")
    lin = _to_lin16(raw, fmt, width)
    interleaved = np.frombuffer(lin, dtype="<i2").reshape(-1, nch)
    out = []
    for c in range(nch):
        channel = interleaved[:, c]
        if rate > tm.SAMPLE_RATE:
            channel = _lowpass(channel, rate)
        mono = np.ascontiguousarray(channel, dtype="<i2").tobytes()
        if rate != tm.SAMPLE_RATE:
            mono, _ = audioop.ratecv(mono, 2, 1, rate, tm.SAMPLE_RATE, None)
        out.append(audioop.lin2ulaw(mono, 2))
    return WavAudio(out, rate, fmt)


def _frames(audio: bytes, count: int) -> list[bytes]:
    padded = audio.ljust(count * FRAME_BYTES, bytes([MULAW_SILENCE]))
    return [padded[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] for i in range(count)]


def _random_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


async def _drain(ws: ClientConnection) -> None:
    """Discard whatever the bridge sends back (marks/audio on bidirectional streams)."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def replay(
    path: Path,
    *,
    url: str,
    auth_token: str = "",
    call_sid: str | None = None,
    both_tracks: bool | None = None,
    speed: float = 1.0,
    custom_parameters: dict[str, str] | None = None,
    account_sid: str | None = None,
    on_frame: FrameHook | None = None,
) -> ReplayResult:
    """Stream ``path`` into ``url`` the way Twilio would; ``speed=0`` sends as fast as possible.

    ``both_tracks=None`` streams both tracks when the file has two or more channels. A mono file
    replayed with both tracks gets a silent outbound track.
    """
    if speed < 0:
        raise ValueError("speed must be >= 0")
    audio = read_wav(path)
    if both_tracks is None:
        both_tracks = len(audio.channels) >= 2
    tracks: list[tm.Track] = ["inbound", "outbound"] if both_tracks else ["inbound"]
    count = -(-len(audio.channels[0]) // FRAME_BYTES)
    per_track: list[tuple[tm.Track, list[bytes]]] = [("inbound", _frames(audio.channels[0], count))]
    if both_tracks:
        agent = audio.channels[1] if len(audio.channels) > 1 else b""
        per_track.append(("outbound", _frames(agent, count)))

    call_sid = call_sid or _random_sid("CA")
    stream_sid = _random_sid("MZ")
    account_sid = account_sid or _random_sid("AC")
    params = {"CallSid": call_sid}
    if auth_token:
        params["token"] = stream_token(auth_token, call_sid)
    params.update(custom_parameters or {})
    headers = {SIGNATURE_HEADER: sign(auth_token, url)} if auth_token else {}

    seq = 0

    def next_seq() -> str:
        nonlocal seq
        seq += 1
        return str(seq)

    sent: dict[str, int] = dict.fromkeys(tracks, 0)
    started = time.monotonic()
    try:
        async with connect(url, additional_headers=headers, max_size=2**20, open_timeout=10) as ws:
            drain = asyncio.create_task(_drain(ws))
            try:
                await ws.send(tm.encode(tm.Connected()).decode())
                start = tm.Start(
                    sequence_number=next_seq(),
                    stream_sid=stream_sid,
                    start=tm.StartInfo(
                        account_sid=account_sid,
                        stream_sid=stream_sid,
                        call_sid=call_sid,
                        tracks=tracks,
                        media_format=tm.MediaFormat(),
                        custom_parameters=params,
                    ),
                )
                await ws.send(tm.encode(start).decode())
                t0 = time.monotonic()
                step = FRAME_MS / 1000 / speed if speed else 0.0
                for i in range(count):
                    if step:
                        delay = t0 + i * step - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    timestamp = str(i * FRAME_MS)
                    chunk = str(i + 1)
                    for track, frames in per_track:
                        media = tm.Media(
                            sequence_number=next_seq(),
                            stream_sid=stream_sid,
                            media=tm.MediaInfo(
                                track=track,
                                chunk=chunk,
                                timestamp=timestamp,
                                payload=base64.b64encode(frames[i]).decode("ascii"),
                            ),
                        )
                        await ws.send(tm.encode(media).decode())
                        sent[track] += 1
                        if on_frame is not None:
                            await on_frame(track, i * FRAME_MS, time.monotonic())
                    if not step and i % 50 == 49:
                        await asyncio.sleep(0)  # let the drain task and the loop breathe
                stop = tm.Stop(
                    sequence_number=next_seq(),
                    stream_sid=stream_sid,
                    stop=tm.StopInfo(account_sid=account_sid, call_sid=call_sid),
                )
                await ws.send(tm.encode(stop).decode())
            finally:
                await ws.close()
                drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drain
            if ws.close_code not in (None, 1000, 1005):
                raise ReplayError(f"bridge closed the stream: {ws.close_code} {ws.close_reason}")
    except InvalidStatus as exc:
        raise ReplayError(f"bridge refused the stream: HTTP {exc.response.status_code}") from exc
    except ConnectionClosed as exc:
        rcvd = exc.rcvd
        detail = f"{rcvd.code} {rcvd.reason}" if rcvd is not None else "connection lost"
        raise ReplayError(f"bridge closed the stream: {detail}") from exc
    except OSError as exc:
        raise ReplayError(f"cannot connect to {url}: {exc}") from exc
    return ReplayResult(
        call_sid=call_sid,
        stream_sid=stream_sid,
        frames_sent=dict(sent),
        duration=count * FRAME_MS / 1000,
        elapsed=time.monotonic() - started,
    )


def main(argv: list[str]) -> int:
    """``bridge replay FILE.wav [--url …] [--both-tracks|--inbound-only] [--speed 1.0] [--call-sid CA…]``."""
    from bridge.settings import Settings  # local: keep the library import light

    parser = argparse.ArgumentParser(prog="bridge replay", description="Replay a WAV file as a Twilio call")
    parser.add_argument("file", type=Path)
    parser.add_argument("--url", default="ws://127.0.0.1:8080/twilio/media")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--both-tracks", dest="both_tracks", action="store_const", const=True, default=None)
    group.add_argument("--inbound-only", dest="both_tracks", action="store_const", const=False)
    parser.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    parser.add_argument("--call-sid", default=None)
    parser.add_argument("--auth-token", default=None, help="default: TWILIO_AUTH_TOKEN")
    args = parser.parse_args(argv)

    try:
        auth_token = args.auth_token if args.auth_token is not None else Settings.from_env().twilio_auth_token
        result = asyncio.run(
            replay(
                args.file,
                url=args.url,
                auth_token=auth_token,
                call_sid=args.call_sid,
                both_tracks=args.both_tracks,
                speed=args.speed,
            )
        )
    except (WavError, ReplayError, OSError, ValueError) as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        return 1
    frames = ", ".join(f"{track}={n}" for track, n in result.frames_sent.items())
    print(
        f"replayed {result.duration:.2f}s of audio in {result.elapsed:.2f}s: "
        f"call {result.call_sid} stream {result.stream_sid} frames {frames}"
    )
    return 0


__all__ = ["FrameHook", "ReplayError", "ReplayResult", "WavAudio", "WavError", "main", "read_wav", "replay"]
