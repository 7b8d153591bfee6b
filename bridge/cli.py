"""The ``bridge`` command: serve, run the recognizer, replay a call, show a transcript, demo, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import FrameType

import httpx
import uvicorn
from starlette.applications import Starlette

from bridge import logs
from bridge.resilience import RetryPolicy
from bridge.settings import Settings

log = logging.getLogger("bridge")
REPO = Path(__file__).resolve().parent.parent
DEFAULT_CALL = REPO / "fixtures" / "calls" / "support_call.wav"


class _DrainingServer(uvicorn.Server):
    """uvicorn that, on SIGTERM/SIGINT, first drains the bridge's calls (readiness turns unready at
    once, every open call is finalized, flushed and queued), then shuts down as usual."""

    def __init__(self, config: uvicorn.Config, app: Starlette, drain_seconds: float) -> None:
        super().__init__(config)
        self.bridge_app = app
        self.drain_seconds = drain_seconds
        self._draining: asyncio.Future[None] | None = None
        self._drain_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        calls = getattr(self.bridge_app.state, "calls", None)
        if calls is None or self._drain_requested or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        calls.draining = True
        log.info("signal %s: draining %d calls before exit", sig, len(calls.sessions))

        async def drain_then_exit() -> None:
            drained = False
            try:
                await asyncio.wait_for(calls.drain(self.drain_seconds), self.drain_seconds + 5)
                drained = True
            except Exception:
                log.exception("drain did not complete")
            super(_DrainingServer, self).handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if drained and isinstance(captured, list) and sig in captured:
                captured.remove(sig)  # drained: exit 0 rather than re-raising the signal after shutdown

        def begin() -> None:
            self._draining = asyncio.ensure_future(drain_then_exit())

        # We are in a signal handler: hand the work to the event loop and wake it up.
        self._loop.call_soon_threadsafe(begin)


def _serve(args: argparse.Namespace) -> int:
    from bridge.app import create_app

    settings = Settings.from_env()
    settings = dataclasses.replace(
        settings, host=args.host or settings.host, port=args.port if args.port is not None else settings.port
    )
    logs.setup(settings.log_level, as_json=settings.log_json)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_config=None, ws_max_size=settings.max_frame_bytes * 2,
        timeout_graceful_shutdown=5, proxy_headers=True, forwarded_allow_ips="*",
    )
    server = _DrainingServer(config, app, drain_seconds=args.drain_seconds)
    server.run()
    return 0


def _recognizer(args: argparse.Namespace) -> int:
    from bridge.embedded.server import EmbeddedConfig, serve

    settings = Settings.from_env()
    logs.setup(settings.log_level, as_json=settings.log_json)
    config = EmbeddedConfig(
        model=args.model or settings.embedded_model,
        workers=args.workers or settings.embedded_workers,
        api_key=args.api_key if args.api_key is not None else settings.recognizer_api_key,
    )
    serve(config, args.host, args.port)
    return 0


def _replay(argv: list[str]) -> int:
    from bridge import replay

    return replay.main(argv)


def _transcript(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    base = (args.url or settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")
    params = {"format": "json" if args.json else "text"}
    if args.batch:
        params["source"] = "batch"
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        r = httpx.get(f"{base}/calls/{args.call_sid}/transcript", params=params, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"cannot reach the bridge at {base}: {exc}", file=sys.stderr)
        return 2
    if r.status_code != 200:
        print(f"{r.status_code}: {r.text.strip()}", file=sys.stderr)
        return 1
    print(r.text.rstrip())
    return 0


def _token(args: argparse.Namespace) -> int:
    from bridge import tokens

    secret = Settings.from_env().subscriber_secret
    if not secret:
        print("BRIDGE_SUBSCRIBER_SECRET is not set: subscriber endpoints are open", file=sys.stderr)
        return 2
    calls = [c.strip() for c in args.calls.split(",") if c.strip()]
    print(tokens.mint(secret, calls, args.ttl))
    return 0


@contextlib.asynccontextmanager
async def running_bridge(
    settings: Settings, *, retry_policy: RetryPolicy | None = None
) -> AsyncIterator[tuple[Starlette, str]]:
    """Run the bridge in this event loop on a free port; yields (app, http base URL)."""
    from bridge.app import create_app

    app = create_app(settings, retry_policy=retry_policy)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_config=None, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("bridge did not start")
            await asyncio.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield app, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


async def _demo_async(args: argparse.Namespace) -> int:
    import websockets

    from bridge import events, replay

    base_settings = Settings.from_env()
    token = base_settings.twilio_auth_token or secrets.token_hex(16)
    settings = dataclasses.replace(base_settings, port=0, twilio_auth_token=token, public_url="")
    path = Path(args.file)
    if not path.exists():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    print(f"Starting the bridge (recognizer: {settings.recognizer}"
          f"{' ' + settings.embedded_model if settings.recognizer == 'embedded' else ''}, "
          f"redis: {'REDIS_URL' if settings.redis_url else 'embedded'}) ...", flush=True)
    async with running_bridge(settings) as (_app, http):
        ws_base = http.replace("http://", "ws://")
        call_sid = "CA" + secrets.token_hex(16)
        print(f"Bridge up at {http}. Replaying {path.name} as Twilio call {call_sid} at {args.speed}x\n",
              flush=True)
        player = asyncio.create_task(
            replay.replay(path, url=f"{ws_base}/twilio/media", auth_token=token, call_sid=call_sid,
                          speed=args.speed)
        )
        async with httpx.AsyncClient(base_url=http, timeout=10) as client:
            while (await client.get(f"/calls/{call_sid}")).status_code != 200:
                if player.done():
                    player.result()
                    break
                await asyncio.sleep(0.05)
            t0 = time.monotonic()
            finals = 0
            async with websockets.connect(f"{ws_base}/calls/{call_sid}/live") as sub:
                async for raw in sub:
                    ev = events.decode(raw)
                    stamp = f"{time.monotonic() - t0:6.2f}s"
                    if isinstance(ev, events.Partial):
                        who = events.SPEAKER[ev.track]
                        print(f"{stamp}  ~ {who:<6} {ev.text}", flush=True)
                    elif isinstance(ev, events.Final):
                        finals += 1
                        who = events.SPEAKER[ev.track]
                        print(f"{stamp}  ✔ {who:<6} [{ev.start:6.2f}-{ev.end:6.2f}] {ev.text}", flush=True)
                    elif isinstance(ev, events.RecognizerStatus) and ev.state in ("failed", "reconnecting"):
                        print(f"{stamp}  ! recognizer {ev.track} {ev.state}: {ev.detail}", flush=True)
                    elif isinstance(ev, events.CallEnded):
                        print(f"{stamp}  call ended ({ev.reason}), {ev.duration:.1f} s", flush=True)
                        break
            result = await player
            transcript = (await client.get(f"/calls/{call_sid}/transcript", params={"format": "text"})).text
            info = (await client.get(f"/calls/{call_sid}")).json()
        print("\nStored transcript (Redis):\n" + transcript.rstrip())
        print(f"\n{finals} finals live; frames sent: {result.frames_sent}; call record: "
              f"{json.dumps({k: info.get(k) for k in ('status', 'tracks', 'stream_sids')})}")
        rec = settings.recording_dir.resolve() / f"{call_sid}.wav"
        print(f"Recording: {rec} ({rec.stat().st_size if rec.exists() else 0} bytes), queued for the batch pass.")
    return 0 if finals else 1


def _demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    logs.setup("warning" if not args.verbose else settings.log_level)
    return asyncio.run(_demo_async(args))


def _bench(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: bridge bench recognizer|batch|e2e|load|fanout [options]   (bridge bench KIND --help)")
        return 0 if argv else 2
    kind, rest = argv[0], argv[1:]
    if kind == "recognizer":
        from bridge.embedded import bench

        return bench.main(rest)
    if kind == "batch":
        from bridge import batch

        return batch.bench_main(rest)
    if kind in ("e2e", "load", "fanout"):
        from bridge import bench as bridge_bench

        return int(bridge_bench.main(argv))
    print(f"unknown benchmark {kind!r}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bridge", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the bridge (Twilio webhooks, media streams, live fan-out)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--drain-seconds", type=float, default=20.0)
    s.set_defaults(func=_serve)

    r = sub.add_parser("recognizer", help="run the embedded Deepgram-compatible recognizer on its own")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8081)
    r.add_argument("--model", help="tiny.en | base | a CTranslate2 model directory")
    r.add_argument("--workers", type=int)
    r.add_argument("--api-key", help="require 'Authorization: Token <key>'")
    r.set_defaults(func=_recognizer)

    sub.add_parser("replay", help="replay a WAV file as a Twilio call into a running bridge", add_help=False)
    sub.add_parser("worker", help="consume recording jobs: the batch compliance pass", add_help=False)
    sub.add_parser("batch", help="transcribe recordings offline in bulk (backfills)", add_help=False)
    sub.add_parser("bench", help="benchmarks: recognizer, batch, e2e, load, fanout", add_help=False)
    sub.add_parser("soak", help="replay calls while killing the recognizer; count lost/doubled finals",
                   add_help=False)

    t = sub.add_parser("transcript", help="print a call's transcript from a running bridge")
    t.add_argument("call_sid")
    t.add_argument("--url", help="bridge base URL (default: BRIDGE_PUBLIC_URL or http://host:port)")
    t.add_argument("--json", action="store_true")
    t.add_argument("--batch", action="store_true", help="the compliance (batch) transcript")
    t.add_argument("--token", help="subscriber token")
    t.set_defaults(func=_transcript)

    k = sub.add_parser("token", help="mint a subscriber token (BRIDGE_SUBSCRIBER_SECRET) for some calls or all")
    k.add_argument("--calls", default="*", help="comma-separated CallSids, or * for every call")
    k.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid")
    k.set_defaults(func=_token)

    d = sub.add_parser("demo", help="bridge + embedded recognizer + embedded Redis, a fixture call replayed")
    d.add_argument("--file", default=str(DEFAULT_CALL))
    d.add_argument("--speed", type=float, default=1.0)
    d.add_argument("--verbose", action="store_true")
    d.set_defaults(func=_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "replay":
        logs.setup("info")
        return _replay(args_list[1:])
    if args_list and args_list[0] in ("worker", "batch"):
        settings = Settings.from_env()
        logs.setup(settings.log_level, as_json=settings.log_json)
        if args_list[0] == "worker":
            from bridge import worker

            return worker.main(args_list[1:])
        from bridge import batch

        return batch.main(args_list[1:])
    if args_list and args_list[0] == "soak":
        from bridge import soak

        logs.setup("error")
        return soak.main(args_list[1:])
    if args_list and args_list[0] == "bench":
        logs.setup("warning")
        return _bench(args_list[1:])
    args = build_parser().parse_args(args_list)
    with contextlib.suppress(KeyboardInterrupt):
        return int(args.func(args))
    return 130


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(main())
