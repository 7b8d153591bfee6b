"""The ``bridge`` command: one argparse tree for every subcommand.

Each handler imports what it runs only when it runs, so ``bridge token`` never loads Whisper and
``bridge --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx

from bridge import logs
from bridge.settings import Settings, SettingsError

log = logging.getLogger("bridge")

Handler = Callable[[argparse.Namespace], int]


# -- handlers --------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from bridge.server import StartupError, serve

    settings = Settings.from_env()
    settings = dataclasses.replace(
        settings, host=args.host or settings.host, port=args.port if args.port is not None else settings.port
    )
    logs.setup(settings.log_level, as_json=settings.log_json)
    workers = args.workers if args.workers is not None else settings.serve_workers
    try:
        if workers > 1:
            from bridge import workers as supervisor

            return supervisor.run(settings, workers=workers, drain_seconds=args.drain_seconds)
        serve(settings, drain_seconds=args.drain_seconds)
    except StartupError as exc:
        print(f"bridge: cannot start: {exc}", file=sys.stderr)
        return 2
    return 0


def _recognizer(args: argparse.Namespace) -> int:
    from bridge.embedded.server import EmbeddedConfig, serve

    settings = Settings.from_env()
    logs.setup(settings.log_level, as_json=settings.log_json)
    config = EmbeddedConfig(
        model=args.model or settings.embedded_model,
        final_model=settings.embedded_final_model if args.final_model is None else args.final_model,
        workers=args.workers or settings.embedded_workers,
        api_key=args.api_key if args.api_key is not None else settings.recognizer_api_key,
    )
    serve(config, args.host, args.port)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from bridge.twilio import replay

    logs.setup("info")
    return replay.main(args)


def _worker(args: argparse.Namespace) -> int:
    from bridge.batch import worker

    settings = Settings.from_env()
    logs.setup(settings.log_level, as_json=settings.log_json)
    return worker.main(args)


def _batch(args: argparse.Namespace) -> int:
    from bridge.batch import cli

    settings = Settings.from_env()
    logs.setup(settings.log_level, as_json=settings.log_json)
    return cli.main(args)


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


def _compliance(args: argparse.Namespace) -> int:
    from bridge.compliance import cli

    return cli.main(args, Settings.from_env())


def _sweep(args: argparse.Namespace) -> int:
    from bridge.retention.files import sweep_now

    settings = Settings.from_env()
    logs.setup(settings.log_level, as_json=settings.log_json)
    report = asyncio.run(sweep_now(settings))
    print(f"{report.files} files of {len(report.deleted)} calls deleted ({report.scanned} scanned, "
          f"{report.kept_active} kept for active calls){'; more are due' if report.truncated else ''}")  # fmt: skip
    return 0


def _token(args: argparse.Namespace) -> int:
    from bridge.live import auth

    secret = Settings.from_env().subscriber_secret
    if not secret:
        print("BRIDGE_SUBSCRIBER_SECRET is not set: subscriber endpoints are open", file=sys.stderr)
        return 2
    if args.capture:  # opens browser capture connections (/try), reads nothing
        print(auth.mint(secret, [], args.ttl, scope="capture"))
        return 0
    calls = [c.strip() for c in args.calls.split(",") if c.strip()]
    print(auth.mint(secret, calls, args.ttl))
    return 0


async def _demo_async(args: argparse.Namespace) -> int:
    import websockets

    from bridge import events
    from bridge.server import running_bridge
    from bridge.twilio import replay

    base_settings = Settings.from_env()
    token = base_settings.twilio_auth_token or secrets.token_hex(16)
    settings = dataclasses.replace(base_settings, port=0, twilio_auth_token=token, public_url="")
    path = Path(args.file)
    if not path.exists():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    recognizer: str = settings.recognizer
    if recognizer == "embedded":
        recognizer += f" {settings.embedded_model}"
        if settings.embedded_final_model:
            recognizer += f" + {settings.embedded_final_model} finals"
    print(f"Starting the bridge (recognizer: {recognizer}, redis: {'REDIS_URL' if settings.redis_url else 'embedded'})"
          " ...", flush=True)  # fmt: skip
    async with running_bridge(settings) as (_app, http):
        ws_base = http.replace("http://", "ws://")
        call_sid = "CA" + secrets.token_hex(16)
        print(f"Bridge up at {http}. Replaying {path.name} as Twilio call {call_sid} at {args.speed}x\n",
              flush=True)  # fmt: skip
        player = asyncio.create_task(
            replay.replay(path, url=f"{ws_base}/twilio/media", auth_token=token, call_sid=call_sid, speed=args.speed)
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
              f"{json.dumps({k: info.get(k) for k in ('status', 'tracks', 'stream_sids')})}")  # fmt: skip
        rec = settings.recording_dir.resolve() / f"{call_sid}.wav"
        print(f"Recording: {rec} ({rec.stat().st_size if rec.exists() else 0} bytes), queued for the batch pass.")
    return 0 if finals else 1


def _demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    logs.setup("warning" if not args.verbose else settings.log_level)
    if args.file is None:
        from bridge.data import call_path

        args.file = str(call_path())
    return asyncio.run(_demo_async(args))


def _soak(args: argparse.Namespace) -> int:
    from bridge.bench import soak

    logs.setup("error")
    return soak.main(args)


def _bench(name: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        import importlib

        logs.setup("warning")
        module = importlib.import_module(f"bridge.bench.{name}")
        result: int = module.main(args)
        return result

    return run


# -- the tree --------------------------------------------------------------------------------------


def _add_serve(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("serve", help="run the bridge (Twilio webhooks, media streams, live fan-out)")
    s.add_argument("--host")
    s.add_argument("--port", type=int)
    s.add_argument("--drain-seconds", type=float, default=20.0, help="how long SIGTERM waits for calls to end")
    s.add_argument("--workers", type=int, help="processes sharing the port (default BRIDGE_WORKERS, 1)")
    s.set_defaults(func=_serve)

    r = sub.add_parser("recognizer", help="run the embedded Deepgram-compatible recognizer on its own")
    r.add_argument("--host", default="127.0.0.1")
    r.add_argument("--port", type=int, default=8081)
    r.add_argument("--model", help="tiny.en | base | a CTranslate2 model directory")
    r.add_argument("--final-model", help="the model of finals (two-pass; '' for the same as --model)")
    r.add_argument("--workers", type=int)
    r.add_argument("--api-key", help="require 'Authorization: Token <key>'")
    r.set_defaults(func=_recognizer)


def _add_tools(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="replay a WAV file as a Twilio call into a running bridge")
    p.add_argument("file", type=Path)
    p.add_argument("--url", default="ws://127.0.0.1:8080/twilio/media")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--both-tracks", dest="both_tracks", action="store_const", const=True, default=None)
    group.add_argument("--inbound-only", dest="both_tracks", action="store_const", const=False)
    p.add_argument("--speed", type=float, default=1.0, help="1 = real time, 0 = as fast as possible")
    p.add_argument("--call-sid", default=None)
    p.add_argument("--auth-token", default=None, help="default: TWILIO_AUTH_TOKEN")
    p.set_defaults(func=_replay)

    t = sub.add_parser("transcript", help="print a call's transcript from a running bridge")
    t.add_argument("call_sid")
    t.add_argument("--url", help="bridge base URL (default: BRIDGE_PUBLIC_URL or http://host:port)")
    t.add_argument("--json", action="store_true")
    t.add_argument("--batch", action="store_true", help="the compliance (batch) transcript")
    t.add_argument("--token", help="subscriber token")
    t.set_defaults(func=_transcript)

    c = sub.add_parser("compliance", help="print a call's compliance report (read from REDIS_URL)")
    c.add_argument("call_sid")
    c.set_defaults(func=_compliance)

    k = sub.add_parser("token", help="mint a subscriber token (BRIDGE_SUBSCRIBER_SECRET) for some calls or all")
    k.add_argument("--calls", default="*", help="comma-separated CallSids, or * for every call")
    k.add_argument("--ttl", type=int, default=3600, help="seconds the token is valid")
    k.add_argument("--capture", action="store_true", help="a capture token for /try (browser microphone), not a reader")
    k.set_defaults(func=_token)

    w = sub.add_parser("sweep", help="delete recordings and batch files past BRIDGE_RETENTION_SECONDS (one pass)")
    w.set_defaults(func=_sweep)

    d = sub.add_parser("demo", help="bridge + embedded recognizer + embedded Redis, a shipped call replayed")
    d.add_argument("--file", default=None, help="a WAV to replay instead of the shipped demo call")
    d.add_argument("--speed", type=float, default=1.0)
    d.add_argument("--verbose", action="store_true")
    d.set_defaults(func=_demo)


def _add_batch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    w = sub.add_parser("worker", help="consume recording jobs: the batch compliance pass")
    w.add_argument("--engine", choices=("auto", "whisper", "deepgram", "elevenlabs"), default="auto",
                   help="auto: the configured recognizer's batch API when it has a key, else embedded whisper")
    w.add_argument("--model", default="", help="whisper: base (default) or tiny.en; API engines: their model")
    w.add_argument("--base-url", default="", help="API base URL (deepgram/elevenlabs)")
    w.add_argument("--threads", type=int, default=0, help="whisper CPU threads (default: all cores)")
    w.add_argument("--consumer", default="", help="consumer name (default host:pid)")
    w.add_argument("--max-attempts", type=int, default=5)
    w.add_argument("--claim-idle", type=float, default=120.0, help="seconds before a silent worker's job is taken")
    w.add_argument("--backoff", type=float, default=10.0, help="first retry delay, seconds (doubles each time)")
    w.add_argument("--grace", type=float, default=30.0, help="seconds the job in hand gets after SIGTERM")
    w.add_argument("--wer-threshold", type=float, default=None, help="flag calls whose live WER is above (0.35)")
    w.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port")
    w.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics port (0.0.0.0: all)")
    w.add_argument("--no-json", action="store_true", help="do not write .batch.json beside recordings")
    w.set_defaults(func=_worker)  # fmt: skip

    b = sub.add_parser("batch", help="transcribe recordings offline in bulk (backfills)")
    b.add_argument("inputs", nargs="*", help="WAV files or directories (searched for *.wav)")
    b.add_argument("--model", default="base", help="whisper model: base (default) or tiny.en")
    b.add_argument("--engine", default="whisper", choices=("whisper", "deepgram", "elevenlabs"))
    b.add_argument("--api-key", default="", help="API key of deepgram/elevenlabs")
    b.add_argument("--base-url", default="", help="API base URL of deepgram/elevenlabs")
    b.add_argument("--out", default=None, help="directory for the .batch.json files (default: beside each file)")
    b.add_argument("--threads", type=int, default=0, help="CPU threads for whisper (default: all cores)")
    b.set_defaults(func=_batch)


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("soak", help="replay calls while killing the recognizer; count lost/doubled finals")
    s.add_argument("--seconds", type=float, default=60.0, help="total time budget")
    s.add_argument("--calls", type=int, default=2, help="concurrent calls per round")
    s.add_argument("--call-seconds", type=float, default=12.0, help="audio per call")
    s.add_argument("--speed", type=float, default=2.0, help="replay speed (1 = real time)")
    s.add_argument("--kill-every", type=float, default=3.0, help="seconds between recognizer SIGKILLs")
    s.add_argument("--down-for", type=float, default=0.3, help="seconds the recognizer stays dead")
    s.set_defaults(func=_soak)

    bench = sub.add_parser("bench", help="benchmarks: recognizer, batch, e2e, load, outage, fanout, redaction")
    kinds = bench.add_subparsers(dest="kind", required=True, metavar="KIND")

    r = kinds.add_parser("recognizer", help="the embedded recognizer: live vs batch WER, latency, capacity")
    r.add_argument("--sets", default="", help="fixture sets, comma-separated (default: all under --fixtures)")
    r.add_argument("--speed", type=float, default=1.0, help="pace of the accuracy phase (1.0 = real time)")
    r.add_argument("--model", default="tiny.en", help="the recognizer's model (partials, and finals by default)")
    r.add_argument("--final-model", default="base",
                   help="the model of finals (two-pass, as BRIDGE_EMBEDDED_FINAL_MODEL); '': the --model")
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--batch-model", default="base", help="batch engine model to compare with ('' to skip)")
    r.add_argument("--keyterm", action="append", default=[], help="a keyterm sent with every stream")
    r.add_argument("--no-accuracy", action="store_true", help="only the capacity ramp")
    r.add_argument("--calls", type=int, default=1, help="capacity: this many concurrent calls")
    r.add_argument("--ramp", action="store_true", help="capacity: raise N until p95 final lag >= 1.5 s")
    r.add_argument("--min-calls", type=int, default=1, help="first N of --ramp")
    r.add_argument("--max-calls", type=int, default=12)
    r.add_argument("--capacity-set", default="basic", help="the fixture set the capacity calls cycle through")
    r.add_argument("--duplicate-lead", type=float, default=1.7,
                   help="capacity: seconds each further copy of a fixture call starts later (0: lock-step)")
    r.add_argument("--seconds", type=float, default=120.0, help="capacity: how long N calls stay on the line")
    r.add_argument("--url", default="", help="benchmark a running recognizer instead of starting one")
    r.add_argument("--fixtures", default="fixtures", help="the repository's fixtures/ directory")
    r.add_argument("--out", default="", help="directory for bench_recognizer.json and report.md")
    r.set_defaults(func=_bench("recognizer"))

    b = kinds.add_parser("batch", help="the batch engine: audio hours per core-hour, WER")
    b.add_argument("--model", default="base")
    b.add_argument("--threads", type=int, default=0, help="CPU threads in all (default: all cores)")
    b.add_argument("--workers", type=int, default=0, help="windows decoded at once (default: one per thread)")
    b.add_argument("--beam", type=int, default=5)
    b.add_argument("--no-vad", action="store_true")
    b.add_argument("--context", type=float, default=10.0, help="encoder context seconds (30 = Whisper's own)")
    b.add_argument("--no-fallback", action="store_true", help="beam search only, no second decode of a looping window")
    b.add_argument("--long", type=int, default=0, help="instead: one stereo call of the fixture calls N times over")
    b.add_argument("--fixtures", default="fixtures", help="the repository's fixtures/ directory")
    b.set_defaults(func=_bench("batch"))

    e = kinds.add_parser("e2e", help="a fixture call through the whole bridge: latency at a live subscriber")
    e.add_argument("--calls", default="short_call", help="call fixtures (fixtures/calls), comma-separated")
    e.add_argument("--runs", type=int, default=4)
    e.add_argument("--speed", type=float, default=1.0, help="replay pace (1 = real time, as Twilio)")
    e.add_argument("--recognizer-url", default="", help="a Deepgram-protocol recognizer (default: embedded)")
    e.add_argument("--redis-url", default="", help="default: REDIS_URL or an embedded redis")
    e.add_argument("--fixtures", default="fixtures", help="the repository's fixtures/ directory")
    e.add_argument("--out", default=None)
    e.set_defaults(func=_bench("e2e"))

    ld = kinds.add_parser("load", help="many calls on a null recognizer: bridge-added latency, lost frames")
    ld.add_argument("--calls", default="25,50,100,200,300,400,500", help="ramp of concurrent calls")
    ld.add_argument("--workers", default="1,2", help="bridge serve --workers values to compare, e.g. 1,2")
    ld.add_argument("--seconds", type=float, default=8.0, help="steady window per step")
    ld.add_argument("--target-ms", type=float, default=10.0)
    ld.add_argument("--keep-going", action="store_true", help="do not stop the ramp at the first failing step")
    ld.add_argument("--max-seconds", type=float, default=150.0, help="no new step after this")
    ld.add_argument("--redis-url", default=None, help="default: an embedded redis started for the run")
    ld.add_argument("--bridge-checkout", default="", metavar="DIR",
                    help="run the bridge of another checkout (e.g. a git worktree of an older commit)")
    ld.add_argument("--results", choices=("staggered", "together"), default="staggered",
                    help="when each call's recognizer results come: at a random phase per call (as independent "
                         "calls' speech does), or at the same moment for every call started together")
    ld.add_argument("--out", default=None)
    ld.set_defaults(func=_bench("load"))

    o = kinds.add_parser("outage", help="a recognizer outage at real-time pace: time until the transcript is current")
    o.add_argument("--before", type=float, default=10.0, help="seconds of call before the outage")
    o.add_argument("--outage", type=float, default=30.0, help="seconds the recognizer is down")
    o.add_argument("--after", type=float, default=40.0, help="seconds of call after it")
    o.add_argument("--catchup", type=float, default=20.0, help="BRIDGE_CATCHUP_SECONDS")
    o.add_argument("--current-lag", type=float, default=1.5,
                   help="a final this close to its audio counts as current (the fake finalizes 1 s windows)")
    o.add_argument("--fallback", action="store_true", help="the recognizer never returns: an ElevenLabs fallback")
    o.add_argument("--fallback-after", type=float, default=5.0, help="BRIDGE_FALLBACK_AFTER_SECONDS")
    o.add_argument("--redis-url", default="", help="default: REDIS_URL or an embedded redis")
    o.add_argument("--out", default=None)
    o.set_defaults(func=_bench("outage"))

    f = kinds.add_parser("fanout", help="one call (or --calls N), many subscribers: final-to-subscriber latency")
    f.add_argument("--subscribers", type=int, default=100, help="in all: half WebSocket, half SSE")
    f.add_argument("--calls", type=int, default=1, help="concurrent two-leg calls; subscribers spread evenly")
    f.add_argument("--seconds", type=float, default=20.0, help="length of the call once all subscribers joined")
    f.add_argument("--connect-batch", type=int, default=50,
                   help="subscribers connected at a time (each batch joins before the next)")  # fmt: skip
    f.add_argument("--client-procs", type=int, default=0,
                   help="run the subscribers in this many processes (0: in the harness's own event loop)")  # fmt: skip
    f.add_argument("--clients", default="lib", choices=("lib", "lean"),
                   help="subscriber clients: websockets/httpx, or lean raw-socket ones (cheap at 1,000)")  # fmt: skip
    f.add_argument("--window", type=float, default=0.5, help="null recognizer: seconds of audio per final")
    f.add_argument("--partial", type=float, default=0.1, help="null recognizer: seconds of audio per partial")
    f.add_argument("--text-bytes", type=int, default=128, help="null recognizer: transcript size (phase 1)")
    f.add_argument("--slow-text-bytes", type=int, default=16384,
                   help="transcript size in phase 2 (0: no phase 2 and no slow subscriber; all of the call measured)")
    f.add_argument("--queue", type=int, default=100,
                   help="BRIDGE_SUBSCRIBER_QUEUE (the default 1000 would need ~40 s of backlog)")  # fmt: skip
    f.add_argument("--target-ms", type=float, default=20.0)
    f.add_argument("--redis-url", default=None)
    f.add_argument("--out", default=None)
    f.set_defaults(func=_bench("fanout"))
    rd = kinds.add_parser("redaction", help="card data found (precision/recall) and silenced in the fixture calls")
    rd.add_argument("--fixtures", default="fixtures", help="the repository's fixtures directory")
    rd.add_argument("--model", default="base", help="whisper model of the audio part")
    rd.add_argument("--no-audio", action="store_true", help="only the text cases")
    rd.set_defaults(func=_bench("redaction"))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bridge", description="Twilio Media Streams to live and stored transcripts.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_tools(sub)
    _add_batch(sub)
    _add_bench(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(args_list)
    args.argv = " ".join(["bridge", *args_list])
    with contextlib.suppress(KeyboardInterrupt):
        try:
            return int(args.func(args))
        except SettingsError as exc:  # one clear line, not a traceback
            print(f"bridge: configuration error: {exc}", file=sys.stderr)
            return 2
    return 130


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    raise SystemExit(main())
