"""``bridge bench load``: how many concurrent two-leg calls one box carries within the latency budget.

Bridge-added latency of a frame = ``time.monotonic()`` when the null recognizer's handler receives
the WebSocket message holding the frame's bytes, minus ``time.monotonic()`` just before the harness
wrote the Twilio ``media`` frame to its socket. It covers both loopback hops, the bridge's parsing,
base64, recording, buffering and forwarding, and the null recognizer's own receive path (so it is
an upper bound). Same host, same system-wide monotonic clock: no skew. The probe rides inside the
audio itself (see :mod:`bridge.bench.null_recognizer`), so nothing is matched after the fact.

Ramp: for each N, open N calls, warm up, measure a steady window, stop the calls and count the
frames the recognizer got against the frames sent. The largest N with p99 < the target and no frame
lost is the capacity. The bridge runs as a ``bridge serve --workers W`` subprocess (W processes on one
port, the kernel spreading the calls; one shared redis); its CPU is that of all its processes.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import itertools
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path

import msgspec

from bridge.bench import common
from bridge.bench.callsim import SimCall, run_calls
from bridge.bench.common import Percentiles, progress


class Step(msgspec.Struct):
    workers: int
    calls: int
    #: Bridge-added latency of every frame in the steady window (ms), including the time a frame
    #: waited for the next ones to coalesce a recognizer send (up to ``BRIDGE_SEND_CHUNK_MS``).
    latency: Percentiles
    #: Latency of the newest frame of each recognizer message: the bridge's forwarding cost alone.
    forwarding: Percentiles
    #: Media frames per recognizer message (how much the bridge coalesced).
    frames_per_send: float
    frames_sent: int
    frames_received: int
    frames_lost: int
    failed_calls: int
    #: CPU of all bridge processes (+ their children) in cores, and per call in % of one core.
    bridge_cpu_cores: float
    cpu_per_call_pct: float
    bridge_rss_mib: float
    rss_per_call_kib: float
    redis_cpu_cores: float
    recognizer_cpu_cores: float
    harness_cpu_cores: float
    #: Worst lateness of the harness's 20 ms ticks (ms): large values mean the harness was starved.
    harness_tick_late_ms: float
    #: Bridge's own bridge_frame_handling_seconds histogram (cumulative over the run, every worker).
    frame_handling: common.HistogramQuantiles | None
    passed: bool


class LoadResult(msgspec.Struct):
    kind: str
    command: str
    machine: common.Machine
    recognizer: str
    definition: str
    target_p99_ms: float
    seconds_per_step: float
    steps: list[Step]
    #: Largest N that passed, per worker count.
    capacity: dict[str, int]
    #: Which bridge was measured: its checkout and git commit.
    bridge: str = ""


DEFINITION = (
    "bridge-added latency = monotonic time the null recognizer receives the WebSocket message holding a "
    "frame's bytes minus monotonic time the simulated Twilio client wrote that media frame (same host, "
    "same clock; includes both loopback hops and the null recognizer's receive path). Forwarding latency = "
    "the same for the newest frame of each message the recognizer receives: what the bridge adds beyond "
    "the coalescing wait it is configured for (BRIDGE_SEND_CHUNK_MS); the capacity criterion uses it"
)


def _parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


async def _open_all(calls: list[SimCall], batch: int = 25) -> None:
    for i in range(0, len(calls), batch):
        group = calls[i : i + batch]
        results = await asyncio.gather(*(c.open() for c in group), return_exceptions=True)
        for call, res in zip(group, results, strict=True):
            if isinstance(res, BaseException):
                call.failed = f"open: {res!r}"


async def _step(
    *, n: int, workers: int, bridges: list[common.BridgeProcess], null: common.NullRecognizerProcess,
    redis_pid: int | None, token: str, seconds: float, target: float, index: itertools.count[int], out: Path,
    baseline_rss: int,
) -> tuple[Step, array.array[float]]:
    null.command("reset")
    urls = [b.url.replace("http://", "ws://") + "/twilio/media" for b in bridges]
    calls = [SimCall(next(index), urls[i % len(urls)], token) for i in range(n)]
    t_open = time.monotonic()
    await _open_all(calls)
    progress(f"  {n} calls open in {time.monotonic() - t_open:.1f}s ({sum(1 for c in calls if c.failed)} failed)")
    live = [c for c in calls if not c.failed]
    await run_calls(live, 1.0)  # warm-up: recognizer connections settle
    bridge_pids = [p for b in bridges for p in common.children(b.pid)]
    meters = {
        "bridge": common.CpuMeter(bridge_pids),
        "redis": common.CpuMeter([redis_pid] if redis_pid else []),
        "null": common.CpuMeter([null.pid]),
        "harness": common.CpuMeter([os.getpid()]),
    }
    null.command("mark")
    late = await run_calls(live, seconds)
    cpu = {k: m.read() for k, m in meters.items()}
    rss = common.rss_bytes(bridge_pids)
    dump = out / f"lat-w{workers}-n{n}"
    null.command(f"dump {dump}")
    lat: array.array[float] = array.array("d")
    lat.frombytes(Path(str(dump) + ".lat").read_bytes())
    newest: array.array[float] = array.array("d")
    newest.frombytes(Path(str(dump) + ".newest").read_bytes())
    Path(str(dump) + ".lat").unlink()
    Path(str(dump) + ".newest").unlink()
    Path(str(dump) + ".finals.json").unlink()
    await asyncio.gather(*(c.stop() for c in live))
    await asyncio.sleep(0.5)
    stats = null.command("stats")
    received = sum(int(v) for v in stats["frames"].values())
    sent = sum(c.sent for c in calls)
    failed = sum(1 for c in calls if c.failed)
    lost = max(0, sent - received)
    summary = common.summarize(lat)
    forwarding = common.summarize(newest)
    text = bridges[0].metrics()
    step = Step(
        workers=workers, calls=n, latency=summary, forwarding=forwarding,
        frames_per_send=round(len(lat) / len(newest), 2) if newest else 0.0, frames_sent=sent,
        frames_received=received, frames_lost=lost,
        failed_calls=failed, bridge_cpu_cores=round(cpu["bridge"], 3),
        cpu_per_call_pct=round(cpu["bridge"] * 100 / n, 3), bridge_rss_mib=round(rss / 2**20, 1),
        rss_per_call_kib=round(max(0, rss - baseline_rss) / 1024 / n, 1), redis_cpu_cores=round(cpu["redis"], 3),
        recognizer_cpu_cores=round(cpu["null"], 3), harness_cpu_cores=round(cpu["harness"], 3),
        harness_tick_late_ms=round(late * 1000, 1),
        frame_handling=common.histogram_quantiles(text, "bridge_frame_handling_seconds"),
        passed=forwarding.n > 0 and forwarding.p99 < target and lost == 0 and failed == 0,
    )
    verdict = "PASS" if step.passed else "FAIL"
    progress(f"  N={n} w={workers}: forwarding {common.fmt(forwarding)}; every frame {common.fmt(summary)}; "
             f"{step.frames_per_send:.1f} frames/send; lost {lost}/{sent}; failed calls {failed}; "
             f"bridge {step.bridge_cpu_cores:.2f} cores ({step.cpu_per_call_pct:.2f}%/call), "
             f"{step.rss_per_call_kib:.0f} KiB/call; harness {step.harness_cpu_cores:.2f}, "
             f"null {step.recognizer_cpu_cores:.2f}, redis {step.redis_cpu_cores:.2f} cores -> {verdict}")
    return step, lat


async def _run(args: argparse.Namespace, out: Path) -> tuple[LoadResult, dict[str, list[float]]]:
    token = secrets.token_hex(16)
    ramp = _parse_ints(args.calls)
    steps: list[Step] = []
    dists: dict[str, list[float]] = {}
    capacity: dict[str, int] = {}
    index = itertools.count(1)
    deadline = time.monotonic() + args.max_seconds
    null = common.NullRecognizerProcess(stagger=args.results == "staggered")
    progress(f"null recognizer (lean, probes only) pid {null.pid} on {null.url}")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp, \
                common.redis_for_bench(args.redis_url, Path(tmp) / "redis") as (redis_url, redis_pid):
            for workers in _parse_ints(args.workers):
                env = common.bench_env(token=token, recognizer_url=null.url, redis_url=redis_url,
                                       recordings=Path(tmp) / "rec")
                bridges = [common.BridgeProcess(env, out / f"bridge-w{workers}.log", workers=workers,
                                                checkout=args.bridge_checkout)]  # fmt: skip
                try:
                    for b in bridges:
                        b.wait_ready()
                    progress(f"bridge serve --workers {workers} ready: " + ", ".join(f"pid {b.pid}" for b in bridges))
                    await asyncio.sleep(0.5)
                    baseline = common.rss_bytes([p for b in bridges for p in common.children(b.pid)])
                    best = 0
                    for n in ramp:
                        if time.monotonic() > deadline:
                            progress(f"time budget ({args.max_seconds:.0f}s) spent: stopping the ramp")
                            break
                        progress(f"step: {n} concurrent two-leg calls, {workers} worker(s), {args.seconds:.0f}s")
                        step, lat = await _step(
                            n=n, workers=workers, bridges=bridges, null=null, redis_pid=redis_pid, token=token,
                            seconds=args.seconds, target=args.target_ms, index=index, out=out,
                            baseline_rss=baseline,
                        )
                        steps.append(step)
                        if workers == _parse_ints(args.workers)[0]:
                            dists[f"N={n}"] = list(lat)
                        if step.passed:
                            best = n
                        elif not args.keep_going:
                            break
                    capacity[str(workers)] = best
                finally:
                    for b in bridges:
                        b.stop()
    finally:
        null.stop()
    return LoadResult(
        kind="load", command=args.command, machine=common.machine(), bridge=_which(args.bridge_checkout),
        recognizer="null recognizer (lean RFC 6455 server in its own process: counts bytes, reads probes; "
                   f"a partial every 0.2 s and a final every 1 s of each track's audio, {args.results})",
        definition=DEFINITION, target_p99_ms=args.target_ms, seconds_per_step=args.seconds, steps=steps,
        capacity=capacity,
    ), dists


def _which(checkout: str) -> str:
    import bridge

    where = Path(checkout) if checkout else Path(bridge.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()  # fmt: skip
    except OSError:
        commit = ""
    return f"{where} (commit {commit or 'unknown'})"


def render(result: LoadResult) -> str:
    rows = [
        [s.workers, s.calls, f"{s.forwarding.p50:.2f}", f"{s.forwarding.p99:.2f}", f"{s.latency.p50:.2f}",
         f"{s.latency.p99:.2f}", f"{s.latency.max:.1f}", f"{s.frames_per_send:.1f}", f"{s.frames_lost}/{s.frames_sent}",
         s.failed_calls, f"{s.bridge_cpu_cores:.2f}", f"{s.cpu_per_call_pct:.3f}", f"{s.rss_per_call_kib:.0f}",
         f"{s.redis_cpu_cores:.2f}", f"{s.recognizer_cpu_cores:.2f}", f"{s.harness_cpu_cores:.2f}",
         f"{s.harness_tick_late_ms:.0f}", "pass" if s.passed else "FAIL"]
        for s in result.steps
    ]  # fmt: skip
    table = common.md_table(
        ["workers", "calls", "fwd p50 ms", "fwd p99 ms", "frame p50 ms", "frame p99 ms", "max ms", "frames/send",
         "lost/sent", "failed", "bridge cores", "%core/call", "KiB/call", "redis cores", "null rec. cores",
         "harness cores", "tick late ms", ""], rows)  # fmt: skip
    cap = ", ".join(f"{w} worker(s): **{n}** calls" for w, n in result.capacity.items())
    return f"""# Bridge load benchmark (null recognizer)

`{result.command}`

Machine: {common.machine_line(result.machine)}

Bridge: {result.bridge}

Recognizer: {result.recognizer}.

Definition: {result.definition}. Target: forwarding p99 < {result.target_p99_ms:g} ms with 0 frames lost;
{result.seconds_per_step:g} s steady window per step after 1 s warm-up.

Capacity: {cap or "no step passed"}.

{table}

![latency vs calls](latency_vs_calls.png)

![latency distributions](latency_distributions.png)
"""


def main(args: argparse.Namespace) -> int:
    args.command = args.argv
    out = common.out_dir("load", args.out)
    result, dists = asyncio.run(_run(args, out))
    by_workers: dict[int, list[Step]] = {}
    for s in result.steps:
        by_workers.setdefault(s.workers, []).append(s)
    xs = sorted({s.calls for s in result.steps})
    ys: dict[str, list[float]] = {}
    for w, ss in by_workers.items():
        ys[f"p50, {w} worker(s)"] = [s.latency.p50 for s in ss]
        ys[f"p99, {w} worker(s)"] = [s.latency.p99 for s in ss]
    common.plot_lines(out / "latency_vs_calls.png", xs, ys, title="bridge-added latency vs concurrent calls",
                      xlabel="concurrent two-leg calls", ylabel="latency (ms)", limit=result.target_p99_ms)
    common.plot_distributions(out / "latency_distributions.png", dists, "bridge-added latency per frame",
                              limit_ms=result.target_p99_ms)
    js, md = common.write_report(out, result, render(result))
    progress(f"wrote {js}, {md}")
    print(render(result))
    return 0
