"""``bridge bench fanout``: one call, M live subscribers (WebSocket and SSE), and one that never reads.

Final-to-subscriber latency = ``time.monotonic()`` when a subscriber's client receives a final minus
``time.monotonic()`` just before the null recognizer sent that final to the bridge (matched on
track and audio start; same host, same clock). It covers the bridge's recognizer read, the Redis
write and publish, the hub's pub/sub read and every subscriber's queue and socket.

The slow subscriber is a raw WebSocket with a tiny receive buffer that stops reading after the
handshake: the bridge must drop it (close 4008) while the others keep their latency and miss nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import secrets
import socket
import struct
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bridge import events
from bridge.bench import common
from bridge.bench.callsim import SimCall, run_calls
from bridge.bench.common import Percentiles, progress
from bridge.bench.null_recognizer import FinalSent


class SubscriberResult(msgspec.Struct):
    kind: str
    finals: int
    #: Finals sent by the recognizer after every subscriber joined that this one never got.
    missed: int
    latency: Percentiles


class SlowSubscriber(msgspec.Struct):
    dropped: bool
    close_code: int | None
    close_reason: str
    #: Seconds from its connection to the bridge's close frame (None when not dropped).
    seconds_to_drop: float | None


class FanoutResult(msgspec.Struct):
    kind: str
    command: str
    machine: common.Machine
    recognizer: str
    definition: str
    subscribers_ws: int
    subscribers_sse: int
    subscriber_queue: int
    seconds: float
    finals_sent: int
    latency_all: Percentiles
    latency_ws: Percentiles
    latency_sse: Percentiles
    worst_subscriber_p99_ms: float
    missed_total: int
    slow: SlowSubscriber
    #: Phase 2 (second half): big transcripts, the slow subscriber stalls and is dropped.
    latency_during_slow: Percentiles
    slow_text_bytes: int
    target_p99_ms: float
    passed: bool


DEFINITION = (
    "final-to-subscriber latency = monotonic time a subscriber client receives a final minus monotonic time "
    "the null recognizer sent it to the bridge (same host, same clock)"
)


class _Received:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.finals: dict[tuple[str, float], float] = {}
        self.error = ""


def _record(rx: _Received, raw: str | bytes, now: float) -> bool:
    """Keep a final's arrival time; True once the call has ended."""
    ev = events.decode(raw)
    if isinstance(ev, events.Final):
        rx.finals.setdefault((ev.track, round(ev.start, 3)), now)
    return isinstance(ev, events.CallEnded)


async def _ws_subscriber(url: str, rx: _Received, ready: asyncio.Event) -> None:
    try:
        async with connect(url, max_size=2**22, compression=None) as ws:
            ready.set()
            async for raw in ws:
                if _record(rx, raw, time.monotonic()):
                    return
    except (ConnectionClosed, OSError) as exc:
        rx.error = repr(exc)
    finally:
        ready.set()


async def _sse_subscriber(client: httpx.AsyncClient, url: str, rx: _Received, ready: asyncio.Event) -> None:
    try:
        async with client.stream("GET", url, headers={"accept": "text/event-stream"}) as response:
            ready.set()
            async for line in response.aiter_lines():
                if line.startswith("data: ") and _record(rx, line[6:], time.monotonic()):
                    return
    except httpx.HTTPError as exc:
        rx.error = repr(exc)
    finally:
        ready.set()


def _slow_connect(port: int, path: str) -> socket.socket:
    """A WebSocket subscriber with a 4 KiB receive buffer that stops reading after the handshake."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("slow subscriber: handshake failed")
        head += chunk
    return sock


def _slow_outcome(sock: socket.socket, connected: float) -> SlowSubscriber:
    """Read everything the bridge left in the slow socket and look for its close frame."""
    sock.settimeout(2)
    data = bytearray()
    with contextlib.suppress(OSError):
        while chunk := sock.recv(1 << 20):
            data += chunk
    closed_at = time.monotonic()
    pos = 0
    while pos + 2 <= len(data):
        opcode, n = data[pos] & 0x0F, data[pos + 1] & 0x7F
        pos += 2
        if n == 126:
            (n,) = struct.unpack_from("!H", data, pos)
            pos += 2
        elif n == 127:
            (n,) = struct.unpack_from("!Q", data, pos)
            pos += 8
        body = bytes(data[pos : pos + n])
        pos += n
        if opcode == 8 and len(body) >= 2:
            code = struct.unpack_from("!H", body)[0]
            return SlowSubscriber(dropped=code == 4008, close_code=code, close_reason=body[2:].decode(errors="replace"),
                                  seconds_to_drop=round(closed_at - connected, 1) if code == 4008 else None)
    return SlowSubscriber(dropped=False, close_code=None, close_reason="", seconds_to_drop=None)


async def _run(args: argparse.Namespace, out: Path) -> tuple[FanoutResult, dict[str, list[float]]]:
    token = secrets.token_hex(16)
    null = common.NullRecognizerProcess(window=args.window, partial=args.partial, text_bytes=args.text_bytes)
    progress(f"null recognizer pid {null.pid}: a final every {args.window:g}s, a partial every {args.partial:g}s "
             "of audio per track")
    n_ws = args.subscribers // 2
    n_sse = args.subscribers - n_ws
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp, \
                common.redis_for_bench(args.redis_url, Path(tmp) / "redis") as (redis_url, _):
            env = common.bench_env(token=token, recognizer_url=null.url, redis_url=redis_url,
                                   recordings=Path(tmp) / "rec",
                                   extra={"BRIDGE_SUBSCRIBER_QUEUE": str(args.queue)})
            bridge = common.BridgeProcess(env, out / "bridge.log")
            try:
                bridge.wait_ready()
                ws_base = bridge.url.replace("http://", "ws://")
                call = SimCall(1, f"{ws_base}/twilio/media", token)
                await call.open()
                player = asyncio.create_task(run_calls([call], args.seconds))
                async with httpx.AsyncClient(base_url=bridge.url, timeout=httpx.Timeout(10, read=None),
                                             limits=httpx.Limits(max_connections=n_sse + 10)) as client:
                    for _ in range(200):
                        if (await client.get(f"/calls/{call.call_sid}")).status_code == 200:
                            break
                        await asyncio.sleep(0.05)
                    receivers: list[_Received] = []
                    tasks = []
                    readies = []
                    for i in range(n_ws + n_sse):
                        rx = _Received("ws" if i < n_ws else "sse")
                        ready = asyncio.Event()
                        if i < n_ws:
                            coro = _ws_subscriber(f"{ws_base}/calls/{call.call_sid}/live", rx, ready)
                        else:
                            coro = _sse_subscriber(client, f"/calls/{call.call_sid}/events", rx, ready)
                        receivers.append(rx)
                        readies.append(ready)
                        tasks.append(asyncio.create_task(coro))
                    await asyncio.gather(*(r.wait() for r in readies))
                    slow = await asyncio.to_thread(_slow_connect, bridge.port, f"/calls/{call.call_sid}/live")
                    slow_at = time.monotonic()
                    joined = time.monotonic() + 0.5
                    progress(f"{n_ws} WebSocket + {n_sse} SSE subscribers and 1 slow subscriber connected; "
                             f"call runs {args.seconds:g}s")
                    await asyncio.sleep(args.seconds / 2)
                    pad_at = time.monotonic()
                    null.command(f"pad {args.slow_text_bytes}")
                    progress(f"phase 2: transcripts padded to {args.slow_text_bytes} bytes so the slow subscriber's "
                             "socket fills up")
                    await player
                    await call.stop()
                    _, pending = await asyncio.wait(tasks, timeout=15)
                    for t in pending:
                        t.cancel()
                    slow_result = await asyncio.to_thread(_slow_outcome, slow, slow_at)
                    slow.close()
            finally:
                bridge.stop()
            dump = out / "finals"
            null.command(f"dump {dump}")
            finals = msgspec.json.decode(Path(str(dump) + ".finals.json").read_bytes(), type=list[FinalSent])
            for suffix in (".finals.json", ".lat"):
                Path(str(dump) + suffix).unlink()
    finally:
        null.stop()
    live = [f for f in finals if f.sent > joined]
    per_kind: dict[str, list[float]] = {"ws": [], "sse": []}
    phase2: list[float] = []
    subs: list[SubscriberResult] = []
    for rx in receivers:
        lat = []
        missed = 0
        for f in live:
            got = rx.finals.get((f.track, round(f.start, 3)))
            if got is None:
                missed += 1
            elif f.sent < pad_at:
                lat.append(got - f.sent)
            else:
                phase2.append(got - f.sent)
        per_kind[rx.kind] += lat
        subs.append(SubscriberResult(kind=rx.kind, finals=len(rx.finals), missed=missed, latency=common.summarize(lat)))
    all_lat = per_kind["ws"] + per_kind["sse"]
    summary = common.summarize(all_lat)
    missed_total = sum(s.missed for s in subs)
    result = FanoutResult(
        kind="fanout", command=args.command, machine=common.machine(),
        recognizer="null recognizer (lean RFC 6455 server in its own process)", definition=DEFINITION,
        subscribers_ws=n_ws, subscribers_sse=n_sse, subscriber_queue=args.queue, seconds=args.seconds,
        finals_sent=len(live), latency_all=summary, latency_ws=common.summarize(per_kind["ws"]),
        latency_sse=common.summarize(per_kind["sse"]),
        worst_subscriber_p99_ms=max((s.latency.p99 for s in subs if s.latency.n), default=float("nan")),
        missed_total=missed_total, slow=slow_result, latency_during_slow=common.summarize(phase2),
        slow_text_bytes=args.slow_text_bytes, target_p99_ms=args.target_ms,
        passed=summary.n > 0 and summary.p99 < args.target_ms and missed_total == 0 and slow_result.dropped,
    )
    progress(f"final-to-subscriber: {common.fmt(summary)}; missed {missed_total}; slow subscriber "
             f"{'dropped (' + str(slow_result.close_code) + ')' if slow_result.dropped else 'NOT dropped'}")
    return result, {"WebSocket": per_kind["ws"], "SSE": per_kind["sse"]}


def render(r: FanoutResult) -> str:
    rows = [["all", *_cells(r.latency_all)], ["WebSocket", *_cells(r.latency_ws)], ["SSE", *_cells(r.latency_sse)]]
    slow = (f"dropped with close {r.slow.close_code} \"{r.slow.close_reason}\" after {r.slow.seconds_to_drop} s"
            if r.slow.dropped else f"not dropped (close code {r.slow.close_code})")
    return f"""# Bridge fan-out benchmark (null recognizer)

`{r.command}`

Machine: {common.machine_line(r.machine)}

Recognizer: {r.recognizer}. Definition: {r.definition}.

One two-leg call for {r.seconds:g} s; {r.subscribers_ws} WebSocket + {r.subscribers_sse} SSE subscribers;
subscriber queue bound {r.subscriber_queue}; {r.finals_sent} finals sent after all subscribers joined (both phases).
Target p99 < {r.target_p99_ms:g} ms: **{"pass" if r.passed else "FAIL"}**.

{common.md_table(["subscribers", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows)}

Worst single subscriber p99: {r.worst_subscriber_p99_ms:.1f} ms. Finals missed by fast subscribers: {r.missed_total}.

Phase 1 (first half of the call) is measured above. In phase 2 the null recognizer pads every transcript
to {r.slow_text_bytes} bytes so the slow subscriber (4 KiB receive buffer, never reads) backs up: {slow}.
Meanwhile the fast subscribers' final-to-subscriber latency was {common.fmt(r.latency_during_slow)}
(bigger events), and they missed {r.missed_total} finals over the whole call.

![final-to-subscriber latency](latency_distributions.png)
"""


def _cells(p: Percentiles) -> list[object]:
    return [p.n, f"{p.p50:.2f}", f"{p.p95:.2f}", f"{p.p99:.2f}", f"{p.max:.1f}"]


def main(args: argparse.Namespace) -> int:
    args.command = args.argv
    out = common.out_dir("fanout", args.out)
    result, dists = asyncio.run(_run(args, out))
    common.plot_distributions(out / "latency_distributions.png", dists, "final-to-subscriber latency",
                              limit_ms=result.target_p99_ms)
    js, md = common.write_report(out, result, render(result))
    progress(f"wrote {js}, {md}")
    print(render(result))
    return 0
