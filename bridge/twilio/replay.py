"""Replay a WAV file into a running bridge as a faithful, signed Twilio Media Stream.

Any WAV (:func:`bridge.audio.to_twilio_mulaw`) becomes 8 kHz mono mu-law per channel (channel 0 = inbound/caller,
channel 1 = outbound/agent). Frames are 20 ms / 160 bytes with string ``sequenceNumber``/``chunk``/
``timestamp`` like Twilio's, both tracks interleaved at the same timestamp, paced against a
monotonic clock so long calls do not drift.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bridge.audio import FRAME_BYTES, MULAW_SILENCE, WavError, to_twilio_mulaw
from bridge.twilio import models as tm
from bridge.twilio.auth import SIGNATURE_HEADER, sign, stream_token

logger = logging.getLogger(__name__)

#: Async hook called after each media frame is sent: (track, timestamp_ms, time.monotonic() at send).
FrameHook = Callable[[tm.Track, int, float], Awaitable[None]]
FRAME_MS = 20


class ReplayError(RuntimeError):
    """The bridge refused or closed the stream before the replay finished."""


@dataclasses.dataclass(frozen=True)
class ReplayResult:
    call_sid: str
    stream_sid: str
    frames_sent: dict[str, int]
    #: Seconds of audio replayed.
    duration: float
    #: Wall-clock seconds the replay took.
    elapsed: float


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
    channels = to_twilio_mulaw(path)
    if both_tracks is None:
        both_tracks = len(channels) >= 2
    tracks: list[tm.Track] = ["inbound", "outbound"] if both_tracks else ["inbound"]
    count = -(-len(channels[0]) // FRAME_BYTES)
    per_track: list[tuple[tm.Track, list[bytes]]] = [("inbound", _frames(channels[0], count))]
    if both_tracks:
        agent = channels[1] if len(channels) > 1 else b""
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


def main(args: argparse.Namespace) -> int:
    """``bridge replay FILE.wav [--url …] [--both-tracks|--inbound-only] [--speed 1.0] [--call-sid CA…]``."""
    from bridge.settings import Settings  # local: keep the library import light

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


__all__ = ["FrameHook", "ReplayError", "ReplayResult", "main", "replay"]
