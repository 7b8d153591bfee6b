"""``bridge bench fanout``: N calls (default 1), M live subscribers spread over them (WebSocket and
SSE), and one subscriber that never reads.

Final-to-subscriber latency = ``time.monotonic()`` when a subscriber's client receives a final minus
``time.monotonic()`` just before the null recognizer sent that final to the bridge (matched on
call, track and audio start; same host, same clock). It covers the bridge's recognizer read, the
Redis write and publish, the hub's pub/sub read and every subscriber's queue and socket.

The calls stream from the start; the subscribers then join in batches (``--connect-batch``), and the
measurement starts 0.5 s after the last one joined and lasts ``--seconds``: the first half is
measured, in the second the transcripts grow so the slow subscriber (a raw WebSocket with a tiny
receive buffer that stops reading after the handshake, on the first call) backs up: the bridge must
drop it (close 4008) while the others keep their latency and miss nothing. ``--slow-text-bytes 0``
skips that second phase: all of ``--seconds`` is measured.

At a thousand subscribers the harness itself is the risk: ``--clients lean`` uses raw-transport
clients (:mod:`bridge.bench.fanout_lean`) instead of websockets/httpx, ``--client-procs K`` runs
them in K processes (:mod:`bridge.bench.fanout_worker`), away from the loop that paces the calls;
the report gives the harness's CPU and event-loop lag so a late harness is seen, not blamed on the
bridge. The soft RLIMIT_NOFILE is raised to the hard limit when the sockets would not fit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import secrets
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import msgspec

from bridge.bench import common
from bridge.bench.callsim import SimCall, run_calls
from bridge.bench.common import Percentiles, progress
from bridge.bench.fanout_clients import (
    Received,
    SlowSubscriber,
    raise_fd_limit,
    slow_connect,
    slow_outcome,
)
from bridge.bench.fanout_worker import Subscribers, WorkerGroup, loop_lag
from bridge.bench.null_recognizer import FinalSent


class SubscriberResult(msgspec.Struct):
    kind: str
    call: int
    finals: int
    #: Finals sent by the recognizer after every subscriber joined that this one never got.
    missed: int
    #: Of those, finals sent in phase 1 (the measured half).
    missed_phase1: int
    duplicated: int
    latency: Percentiles


class CallResult(msgspec.Struct):
    """One call's subscribers together (phase 1 latency)."""

    call: int
    subscribers: int
    finals_sent: int
    latency: Percentiles
    worst_subscriber_p99_ms: float
    missed: int
    missed_phase1: int
    duplicated: int


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
    calls: int = 1
    #: Per call, phase 1; the spread of their p99 (best, worst) is the fairness across calls.
    per_call: list[CallResult] = []
    per_call_p99_min_ms: float = float("nan")
    per_call_p99_max_ms: float = float("nan")
    #: Finals missed in phase 1 (``missed_total`` counts both phases).
    missed_phase1: int = 0
    #: Finals that no joined subscriber of their call got (call, track, audio start, seconds after the
    #: measurement began that the recognizer sent it): lost by the bridge, not by one slow client.
    missed_by_all: list[tuple[int, str, float, float]] = []
    duplicated_total: int = 0
    #: Subscribers that never joined (refused, failed or timed out).
    connect_failures: int = 0
    #: Subscriber errors ("connect: ..." before joining, "after join: ..." e.g. dropped as too slow) by count.
    subscriber_errors: dict[str, int] = {}
    connect_seconds: float = 0.0
    connect_batch: int = 0
    #: CPU of the bridge process and of this harness (all subscribers and calls) in phase 1, in cores.
    bridge_cores: float = float("nan")
    harness_cores: float = float("nan")
    #: How late a 20 ms timer fired in this harness's event loop in phase 1 (the calls' loop, and the
    #: subscribers' without ``--client-procs``): a late loop paces the calls and stamps arrivals late,
    #: so a large lag means the harness, not the bridge, adds to the latency.
    harness_loop_lag: Percentiles = msgspec.field(default_factory=lambda: common.summarize([]))
    #: ``--client-procs K``: the subscribers' processes, and their loops' lag in phase 1.
    client_procs: int = 0
    #: ``lib`` (websockets and httpx, as a dashboard would) or ``lean`` (raw transports, cheap).
    clients: str = "lib"
    subscriber_loop_lag: Percentiles = msgspec.field(default_factory=lambda: common.summarize([]))
    nofile_limit: int = 0


DEFINITION = (
    "final-to-subscriber latency = monotonic time a subscriber client receives a final minus monotonic time "
    "the null recognizer sent it to the bridge (same host, same clock)"
)

#: Upper bound (seconds) of the calls' audio beyond ``--seconds`` (covers the subscribers' connect phase).
_CONNECT_BUDGET = 300.0


class _Run:
    """What the live part of a run hands to the analysis."""

    def __init__(self) -> None:
        self.receivers: list[Received] = []
        self.calls: list[SimCall] = []
        self.joined = self.pad_at = 0.0
        self.connect_seconds = 0.0
        self.bridge_cores = self.harness_cores = float("nan")
        self.loop_lag: list[float] = []
        self.subscriber_lag: list[float] = []
        self.slow = SlowSubscriber(dropped=False, close_code=None, close_reason="", seconds_to_drop=None)
        self.finals: list[FinalSent] = []


async def _wait_for_records(client: httpx.AsyncClient, calls: list[SimCall]) -> None:
    for call in calls:
        for _ in range(200):
            if (await client.get(f"/calls/{call.call_sid}")).status_code == 200:
                break
            await asyncio.sleep(0.05)


async def _live(args: argparse.Namespace, bridge: common.BridgeProcess, null: common.NullRecognizerProcess,
                token: str, run: _Run) -> None:
    n_ws = args.subscribers // 2
    ws_base = bridge.url.replace("http://", "ws://")
    run.calls = [SimCall(i + 1, f"{ws_base}/twilio/media", token) for i in range(args.calls)]
    for call in run.calls:
        await call.open()
    player = asyncio.create_task(run_calls(run.calls, args.seconds + _CONNECT_BUDGET))
    async with httpx.AsyncClient(base_url=bridge.url, timeout=10) as client:
        await _wait_for_records(client, run.calls)
    specs = [("ws" if i < n_ws else "sse", call.index, call.call_sid)
             for i, call in ((i, run.calls[i % len(run.calls)]) for i in range(args.subscribers))]
    lean = args.clients == "lean"
    group: Subscribers | WorkerGroup = (WorkerGroup(args.client_procs, bridge.url, specs, lean=lean)
                                        if args.client_procs else Subscribers(bridge.url, specs, lean=lean))
    t0 = time.monotonic()
    await group.join(args.connect_batch)
    run.connect_seconds = time.monotonic() - t0
    with_slow = args.slow_text_bytes > 0
    slow = (await asyncio.to_thread(slow_connect, bridge.port, f"/calls/{run.calls[0].call_sid}/live")
            if with_slow else None)
    slow_at = time.monotonic()
    where = f" in {args.client_procs} processes" if args.client_procs else ""
    progress(f"{group.connected} of {args.subscribers} subscribers ({n_ws} WebSocket, {args.subscribers - n_ws} SSE"
             f"{where}) over {len(run.calls)} call(s) joined in {run.connect_seconds:.1f}s"
             f"{', and 1 slow subscriber' if with_slow else ''}; "
             f"measuring {args.seconds:g}s")
    run.joined = slow_at + 0.5
    await asyncio.sleep(0.5)
    meter = common.CpuMeter(common.children(bridge.pid))
    harness = common.CpuMeter([os.getpid(), *(group.pids if isinstance(group, WorkerGroup) else [])])
    lag = asyncio.create_task(loop_lag(run.loop_lag))
    if isinstance(group, WorkerGroup):
        group.lag_start()
    phase1 = args.seconds / 2 if with_slow else args.seconds
    await asyncio.sleep(max(0.0, phase1 - 0.5))
    lag.cancel()
    if isinstance(group, WorkerGroup):
        group.lag_stop()
    run.pad_at = time.monotonic()
    run.bridge_cores = round(meter.read(), 3)
    run.harness_cores = round(harness.read(), 3)
    if with_slow:
        null.command(f"pad {args.slow_text_bytes}")
        progress(f"phase 2: transcripts padded to {args.slow_text_bytes} bytes so the slow subscriber's "
                 "socket fills up")
        await asyncio.sleep(args.seconds / 2)
    player.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await player
    await asyncio.gather(*(call.stop() for call in run.calls))
    await group.finish(15)
    run.receivers = group.receivers
    run.subscriber_lag = group.lag
    if slow is not None:
        run.slow = await asyncio.to_thread(slow_outcome, slow, slow_at)
        slow.close()


async def _run(args: argparse.Namespace, out: Path) -> tuple[FanoutResult, dict[str, list[float]]]:
    token = secrets.token_hex(16)
    # Each subscriber is one socket here and one in the bridge (a child: it inherits the limit).
    nofile, _ = raise_fd_limit(args.subscribers + 4 * args.calls + 200)
    null = common.NullRecognizerProcess(window=args.window, partial=args.partial, text_bytes=args.text_bytes)
    progress(f"null recognizer pid {null.pid}: a final every {args.window:g}s, a partial every {args.partial:g}s "
             "of audio per track")
    run = _Run()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp, \
                common.redis_for_bench(args.redis_url, Path(tmp) / "redis") as (redis_url, _):
            env = common.bench_env(token=token, recognizer_url=null.url, redis_url=redis_url,
                                   recordings=Path(tmp) / "rec",
                                   extra={"BRIDGE_SUBSCRIBER_QUEUE": str(args.queue)})
            bridge = common.BridgeProcess(env, out / "bridge.log")
            try:
                bridge.wait_ready()
                await _live(args, bridge, null, token, run)
            finally:
                bridge.stop()
            dump = out / "finals"
            null.command(f"dump {dump}")
            run.finals = msgspec.json.decode(Path(str(dump) + ".finals.json").read_bytes(), type=list[FinalSent])
            for suffix in (".finals.json", ".lat"):
                Path(str(dump) + suffix).unlink()
    finally:
        null.stop()
    return _analyse(args, run, nofile)


def _analyse(args: argparse.Namespace, run: _Run, nofile: int) -> tuple[FanoutResult, dict[str, list[float]]]:
    live: dict[int, list[FinalSent]] = {call.index: [] for call in run.calls}
    for f in run.finals:
        if f.sent > run.joined and f.call in live:
            live[f.call].append(f)
    per_kind: dict[str, list[float]] = {"ws": [], "sse": []}
    split = run.pad_at if args.slow_text_bytes else math.inf  # no phase 2: every final is phase 1
    per_call_lat: dict[int, list[float]] = {i: [] for i in live}
    phase2: list[float] = []
    subs: list[SubscriberResult] = []
    for rx in run.receivers:
        lat = []
        missed = missed1 = 0
        for f in live[rx.call]:
            got = rx.finals.get((f.track, round(f.start, 3)))
            if got is None:
                missed += 1
                missed1 += f.sent < split
            elif f.sent < split:
                lat.append(got - f.sent)
            else:
                phase2.append(got - f.sent)
        per_kind[rx.kind] += lat
        per_call_lat[rx.call] += lat
        subs.append(SubscriberResult(kind=rx.kind, call=rx.call, finals=len(rx.finals), missed=missed,
                                     missed_phase1=missed1, duplicated=rx.duplicates,
                                     latency=common.summarize(lat)))
    missed_by_all = []
    for i, finals in live.items():
        joined = [rx for rx in run.receivers if rx.call == i and rx.connected]
        missed_by_all += [(i, f.track, f.start, round(f.sent - run.joined, 3)) for f in finals
                          if joined and all((f.track, round(f.start, 3)) not in rx.finals for rx in joined)]
    per_call = []
    for i, lat in per_call_lat.items():
        mine = [s for s in subs if s.call == i]
        per_call.append(CallResult(
            call=i, subscribers=len(mine), finals_sent=len(live[i]), latency=common.summarize(lat),
            worst_subscriber_p99_ms=max((s.latency.p99 for s in mine if s.latency.n), default=float("nan")),
            missed=sum(s.missed for s in mine), missed_phase1=sum(s.missed_phase1 for s in mine),
            duplicated=sum(s.duplicated for s in mine)))
    call_p99 = [c.latency.p99 for c in per_call if c.latency.n]
    all_lat = per_kind["ws"] + per_kind["sse"]
    summary = common.summarize(all_lat)
    missed_total = sum(s.missed for s in subs)
    missed_phase1 = sum(s.missed_phase1 for s in subs)
    duplicated_total = sum(s.duplicated for s in subs)
    connect_failures = sum(not rx.connected for rx in run.receivers)
    errors = Counter(f"{'after join' if rx.connected else 'connect'}: {rx.error[:160]}"
                     for rx in run.receivers if rx.error or not rx.connected)
    n_ws = args.subscribers // 2
    result = FanoutResult(
        kind="fanout", command=args.command, machine=common.machine(),
        recognizer="null recognizer (lean RFC 6455 server in its own process)", definition=DEFINITION,
        subscribers_ws=n_ws, subscribers_sse=args.subscribers - n_ws, subscriber_queue=args.queue,
        seconds=args.seconds, finals_sent=sum(len(v) for v in live.values()), latency_all=summary,
        latency_ws=common.summarize(per_kind["ws"]), latency_sse=common.summarize(per_kind["sse"]),
        worst_subscriber_p99_ms=max((s.latency.p99 for s in subs if s.latency.n), default=float("nan")),
        missed_total=missed_total, missed_phase1=missed_phase1, missed_by_all=missed_by_all[:50], slow=run.slow,
        latency_during_slow=common.summarize(phase2),
        slow_text_bytes=args.slow_text_bytes, target_p99_ms=args.target_ms,
        passed=(summary.n > 0 and summary.p99 < args.target_ms and missed_total == 0
                and (run.slow.dropped or not args.slow_text_bytes)
                and duplicated_total == 0 and connect_failures == 0),
        calls=len(run.calls), per_call=per_call, per_call_p99_min_ms=min(call_p99, default=float("nan")),
        per_call_p99_max_ms=max(call_p99, default=float("nan")), duplicated_total=duplicated_total,
        connect_failures=connect_failures, subscriber_errors=dict(errors.most_common(10)),
        connect_seconds=round(run.connect_seconds, 2),
        connect_batch=args.connect_batch, bridge_cores=run.bridge_cores, harness_cores=run.harness_cores,
        harness_loop_lag=common.summarize(run.loop_lag), client_procs=args.client_procs, clients=args.clients,
        subscriber_loop_lag=common.summarize(run.subscriber_lag),
        nofile_limit=nofile,
    )
    progress(f"final-to-subscriber: {common.fmt(summary)}; missed {missed_total}, duplicated {duplicated_total}, "
             f"connect failures {connect_failures}; bridge {run.bridge_cores:.2f} cores; slow subscriber "
             f"{'dropped (' + str(run.slow.close_code) + ')' if run.slow.dropped else 'NOT dropped'}"
             f"{'' if args.slow_text_bytes else ' (none: phase 2 skipped)'}")
    return result, {"WebSocket": per_kind["ws"], "SSE": per_kind["sse"]}


def render(r: FanoutResult) -> str:
    rows = [["all", *_cells(r.latency_all)], ["WebSocket", *_cells(r.latency_ws)], ["SSE", *_cells(r.latency_sse)]]
    slow = (f"dropped with close {r.slow.close_code} \"{r.slow.close_reason}\" after {r.slow.seconds_to_drop} s"
            if r.slow.dropped else f"not dropped (close code {r.slow.close_code})")
    phases = " (both phases)" if r.slow_text_bytes > 0 else ""
    calls = "One two-leg call" if r.calls == 1 else f"{r.calls} concurrent two-leg calls"
    spread = "" if r.calls == 1 else (", spread evenly over the calls"
                                      + (" (the slow one on the first)" if r.slow_text_bytes > 0 else ""))
    phase2 = ("Phase 2 (big transcripts and a subscriber that never reads) was skipped (`--slow-text-bytes 0`):\n"
              "the whole call is phase 1, measured above.\n")
    if r.slow_text_bytes > 0:
        phase2 = (
            "Phase 1 (first half of the call) is measured above. In phase 2 the null recognizer pads every "
            f"transcript\nto {r.slow_text_bytes} bytes so the slow subscriber (4 KiB receive buffer, never reads) "
            f"backs up: {slow}.\nMeanwhile the fast subscribers' final-to-subscriber latency was "
            f"{common.fmt(r.latency_during_slow)}\n(bigger events), and they missed {r.missed_total} finals over "
            "the whole call.\n")
    errors = "".join(f"\n- {n} x {e}" for e, n in r.subscriber_errors.items())
    errors = f"\nSubscriber errors (most frequent first):\n{errors}\n" if errors else ""
    missed = f"{r.missed_total} ({r.missed_phase1} of them in phase 1)" if r.missed_total else "0"
    if r.missed_by_all:
        missed += (f"; {len(r.missed_by_all)} final(s) reached none of their call's subscribers (call, track, "
                   f"start, sent at s): {', '.join(str(m) for m in r.missed_by_all[:5])}")
    procs = (f"\nSubscribers in {r.client_procs} processes, their loops late by {common.fmt(r.subscriber_loop_lag)}."
             if r.client_procs else "")
    if r.clients == "lean":
        procs += "\nSubscriber clients: lean raw-socket WebSocket and SSE (bridge/bench/fanout_lean.py)."
    per_call = ""
    if r.calls > 1:
        call_rows = [[c.call, c.subscribers, c.finals_sent, *_cells(c.latency), f"{c.worst_subscriber_p99_ms:.1f}",
                      f"{c.missed_phase1} / {c.missed}", c.duplicated] for c in r.per_call]
        per_call = f"""
Per call (phase 1): p99 from {r.per_call_p99_min_ms:.2f} ms (best call) to {r.per_call_p99_max_ms:.2f} ms (worst call).

{common.md_table(["call", "subscribers", "finals sent", "n", "p50 ms", "p95 ms", "p99 ms", "max ms",
                  "worst subscriber p99 ms", "missed (phase 1 / all)", "duplicated"], call_rows)}
"""
    return f"""# Bridge fan-out benchmark (null recognizer)

`{r.command}`

Machine: {common.machine_line(r.machine)}

Recognizer: {r.recognizer}. Definition: {r.definition}.

{calls} for {r.seconds:g} s; {r.subscribers_ws} WebSocket + {r.subscribers_sse} SSE subscribers{spread};
subscriber queue bound {r.subscriber_queue}; {r.finals_sent} finals sent after all subscribers joined{phases}.
Target p99 < {r.target_p99_ms:g} ms: **{"pass" if r.passed else "FAIL"}**{_why(r)}.

{common.md_table(["subscribers", "n", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows)}

Worst single subscriber p99: {r.worst_subscriber_p99_ms:.1f} ms. Finals missed by fast subscribers: {missed}.
{per_call}
Finals duplicated: {r.duplicated_total}. Subscriber connect failures: {r.connect_failures} (connects took
{r.connect_seconds:g} s, batches of {r.connect_batch}, before the measurement; RLIMIT_NOFILE {r.nofile_limit};
the bridge has no per-process subscriber cap to raise).
CPU in phase 1: bridge {r.bridge_cores:.2f} cores, this harness (calls and subscribers) {r.harness_cores:.2f} cores;
the harness's event loop ran late by {common.fmt(r.harness_loop_lag)} (20 ms timer).{procs}
{errors}
{phase2.rstrip()}

![final-to-subscriber latency](latency_distributions.png)
"""


def _why(r: FanoutResult) -> str:
    """What failed, when the run did not pass."""
    if r.passed:
        return ""
    why = [text for bad, text in (
        (not r.latency_all.n, "nothing measured"), (r.latency_all.p99 >= r.target_p99_ms, "p99 over the target"),
        (r.missed_total > 0, "finals missed"), (r.duplicated_total > 0, "finals duplicated"),
        (r.connect_failures > 0, "subscribers failed to connect"), (
            r.slow_text_bytes > 0 and not r.slow.dropped, "slow subscriber not dropped"),
    ) if bad]
    return f" ({'; '.join(why)})"


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
