"""``bridge bench recognizer``: the embedded recognizer on hard calls, live next to the batch pass.

Per fixture set (``bridge.bench.fixture_sets``: long monologues, robotic voices, line noise, short answers in
silence, a real human reading, the eval calls…), each call is streamed the way the bridge streams it (one
``/v1/listen`` connection per track, 20 ms mu-law frames at real-time pace), one call at a time, and
scored: the WER of the live finals next to the WER of the batch pass (the same Whisper batch engine the
worker runs) on the same audio, time to first partial after each turn's speech onset, partial latency,
final lag after each turn's end, partial churn and looping partials (onset and end: the turn's first and
last audible frame, :func:`bridge.bench.fixture_sets.speech_span`). Then the capacity ramp: N calls at
once until p95 final lag reaches 1.5 s. Latencies are wall-clock, against the instant the audio was sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from bridge.audio import FRAME_BYTES
from bridge.bench.fixture_sets import FixtureCall, Turn, load_sets
from bridge.embedded.engine import MAX_CARD_DIGITS, spoken_digits
from bridge.recognizers.deepgram import wire as dg
from bridge.wer import ZERO, WerResult, normalize, wer

QUERY = (
    "model=nova-3&encoding=mulaw&sample_rate=8000&channels=1&interim_results=true&endpointing=300"
    "&utterance_end_ms=1000&vad_events=true&punctuate=true&smart_format=true&language=en-US"
)
SAMPLE_RATE = 8000


@dataclass
class TrackRun:
    turns: list[Turn]
    t0: float = 0.0
    received: list[tuple[float, dg.ServerMessage]] = field(default_factory=list)

    def results(self) -> list[tuple[float, dg.Results]]:
        return [(t, m) for t, m in self.received if isinstance(m, dg.Results)]

    def final_text(self) -> str:
        return " ".join(m.channel.alternatives[0].transcript for _, m in self.results() if m.is_final).strip()


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return round(s[k], 3)


async def stream_track(url: str, audio: bytes, run: TrackRun, speed: float, query: str = QUERY) -> None:
    async with connect(f"{url}/v1/listen?{query}", max_size=None) as ws:

        async def reader() -> None:
            with contextlib.suppress(websockets.ConnectionClosedError):
                async for raw in ws:
                    run.received.append((time.monotonic(), dg.decode_server(raw)))

        task = asyncio.create_task(reader())
        run.t0 = time.monotonic()
        step = FRAME_BYTES / SAMPLE_RATE / speed
        for k, i in enumerate(range(0, len(audio), FRAME_BYTES)):
            delay = run.t0 + k * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(audio[i : i + FRAME_BYTES])
        await ws.send(dg.encode(dg.CloseStream()).decode())
        await task


def loops(text: str, shortest: int = 3) -> bool:
    """True when a run of ``shortest`` or more words repeats right after itself (a decoder loop)."""
    words = normalize(text)
    for n in range(shortest, len(words) // 2 + 1):
        for i in range(len(words) - 2 * n + 1):
            if words[i : i + n] == words[i + n : i + 2 * n]:
                if 0 < spoken_digits(words[i : i + n]) * 2 <= MAX_CARD_DIGITS:
                    continue  # a card number's digits ("4111 1111 1111 1111"), not a loop
                return True
    return False


@dataclass
class Latency:
    ttfp: list[float] = field(default_factory=list)
    partial: list[float] = field(default_factory=list)
    final: list[float] = field(default_factory=list)
    rewritten: int = 0
    shown: int = 0
    partials: int = 0
    looping: int = 0
    #: The looping partials themselves, to see what looped.
    loop_texts: list[str] = field(default_factory=list)

    def add(self, other: Latency) -> None:
        self.ttfp += other.ttfp
        self.partial += other.partial
        self.final += other.final
        self.rewritten += other.rewritten
        self.shown += other.shown
        self.partials += other.partials
        self.looping += other.looping
        self.loop_texts += other.loop_texts


def analyse(run: TrackRun, speed: float, until: float | None = None) -> Latency:
    """Latency of one track's results, against the wall-clock instant the audio they cover was sent;
    with ``until`` (monotonic time), only partials received and turns ended before it."""
    scale = 1.0 / speed
    out = Latency()
    results = run.results()
    if until is not None:
        results = [(t, m) for t, m in results if t <= until]
    previous: dict[float, list[str]] = {}
    for t, m in results:
        text = m.channel.alternatives[0].transcript
        if m.is_final or not text:
            continue
        out.partials += 1
        if loops(text):
            out.looping += 1
            out.loop_texts.append(text)
        out.partial.append(t - (run.t0 + (m.start + m.duration) * scale))
        words = text.split()
        before = previous.get(m.start, [])
        same = 0
        for a, b in zip(before, words, strict=False):
            if a != b:
                break
            same += 1
        out.rewritten += len(before) - same
        out.shown += len(before)
        previous[m.start] = words
    for turn in run.turns:
        if until is not None and run.t0 + turn.end * scale > until:
            continue
        hits = [(t, m) for t, m in results if m.channel.alternatives[0].transcript
                and m.start < turn.end and m.start + m.duration > turn.start]  # fmt: skip
        if hits:
            out.ttfp.append(hits[0][0] - (run.t0 + turn.start * scale))
        finals = [(t, m) for t, m in hits if m.is_final]
        if finals:
            out.final.append(finals[-1][0] - (run.t0 + turn.end * scale))
    return out


@dataclass
class SetScore:
    calls: int = 0
    audio: float = 0.0
    live: WerResult = ZERO
    batch: WerResult = ZERO
    latency: Latency = field(default_factory=Latency)
    final_loops: int = 0
    examples: list[dict[str, str]] = field(default_factory=list)

    def row(self, name: str) -> dict[str, Any]:
        lat = self.latency
        ratio = self.live.rate / self.batch.rate if self.batch.rate else None
        return {
            "set": name, "calls": self.calls, "audio_seconds": round(self.audio, 1),
            "live_wer": round(self.live.rate, 4), "batch_wer": round(self.batch.rate, 4),
            "live_over_batch": round(ratio, 2) if ratio is not None else None,
            "ref_words": self.live.ref_words,
            "ttfp_p50": pct(lat.ttfp, 50), "ttfp_p95": pct(lat.ttfp, 95),
            "partial_latency_p50": pct(lat.partial, 50), "partial_latency_p95": pct(lat.partial, 95),
            "final_lag_p50": pct(lat.final, 50), "final_lag_p95": pct(lat.final, 95),
            "partial_churn": round(lat.rewritten / lat.shown, 4) if lat.shown else None,
            "looping_partials": lat.looping, "partials": lat.partials, "looping_finals": self.final_loops,
            "looping_examples": lat.loop_texts[:5],
        }  # fmt: skip


async def score_calls(url: str, sets: dict[str, list[FixtureCall]], speed: float, query: str) -> dict[str, SetScore]:
    """Stream every call (its two tracks together), one call at a time, and score its live finals."""
    scores: dict[str, SetScore] = {}
    for set_name, calls in sets.items():
        score = scores.setdefault(set_name, SetScore())
        for call in calls:
            audio = call.audio()
            runs = {track: TrackRun(call.spoken_turns(track, audio[track])) for track in audio}
            await asyncio.gather(*(stream_track(url, audio[t], runs[t], speed, query) for t in audio))
            score.calls += 1
            score.audio += call.duration
            for track, run in runs.items():
                ref = call.references.get(track, "")
                hyp = run.final_text()
                score.live = score.live + wer(ref, hyp)
                score.latency.add(analyse(run, speed))
                score.final_loops += loops(hyp, 4)
                score.examples.append({"call": call.name, "track": track, "live": hyp})
            print(f"  {set_name}/{call.name}: live {call.duration:.0f} s", file=sys.stderr, flush=True)
    return scores


def score_batch(sets: dict[str, list[FixtureCall]], scores: dict[str, SetScore], model: str) -> None:
    """The batch pass (the worker's engine) on the same calls: the accuracy the live path is held to."""
    from bridge.audio import read_wav
    from bridge.batch.engine import transcribe_recording
    from bridge.batch.whisper import WhisperBatchEngine

    engine = WhisperBatchEngine(model, beam_size=5)
    for set_name, calls in sets.items():
        for call in calls:
            t = asyncio.run(transcribe_recording(engine, read_wav(call.wav), call_sid=call.name))
            for track, ref in call.references.items():
                scores[set_name].batch = scores[set_name].batch + wer(ref, t.text(track))
            for ex in scores[set_name].examples:
                if ex["call"] == call.name:
                    ex["batch"] = t.text(ex["track"])


async def recognizer_counters(url: str) -> dict[str, float]:
    """Decodes run and their seconds, finals packed, cheap, decoded ahead: from the recognizer's /metrics."""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(url.replace("ws://", "http://", 1) + "/metrics")
        families = list(text_string_to_metric_families(response.text)) if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError):  # not the embedded recognizer: no counters
        return {}
    out: dict[str, float] = {}
    for family in families:
        for sample in family.samples:
            labels = ",".join(f"{v}" for v in sample.labels.values())
            name = sample.name.removeprefix("recognizer_") + (f"[{labels}]" if labels else "")
            if sample.name.endswith(("_count", "_sum")) or (family.type == "gauge" and "finals" in sample.name):
                out[name] = sample.value
            elif sample.name.startswith(("recognizer_skipped", "recognizer_coalesced")):
                out[name] = sample.value
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: How much later each further copy of a fixture call starts in a capacity run (see
#: :func:`run_concurrent`); not a multiple of any common turn length.
DUPLICATE_LEAD_S = 1.7
#: A capacity run's measuring window: long enough that every slot completes calls inside it.
CAPACITY_SECONDS = 120.0


async def run_concurrent(url: str, calls: list[FixtureCall], n: int, speed: float, query: str, server_pid: int | None,
                         duplicate_lead: float = DUPLICATE_LEAD_S, seconds: float = CAPACITY_SECONDS,
                         ) -> dict[str, Any]:  # fmt: skip
    """``n`` calls at once for ``seconds``: latency and accuracy under load, CPU per call.

    Each of the ``n`` slots plays the calls back to back (slot ``c`` starting with call ``c`` of the
    cycle), so ``n`` calls are on the whole window, as on a busy line; fixture calls last 15-60 s,
    and playing each once would leave two of eight calls for the last third of the run. Only what
    happened inside the window counts: partials received and turns ended in it, and the words of
    calls that ended in it. A slot that starts the same call as another starts ``duplicate_lead``
    seconds after it: copies in lock-step end every turn at the same instant, so their finals queue
    together, a burst no set of independent calls makes (0 measures it anyway).
    """
    played: list[tuple[TrackRun, str, float]] = []
    loop_start = time.monotonic()
    window_end = loop_start + seconds

    async def slot(c: int) -> None:
        await asyncio.sleep((c // len(calls)) * duplicate_lead)
        k = c
        while time.monotonic() < window_end:
            call = calls[k % len(calls)]
            k += 1
            audio = call.audio()
            runs = {track: TrackRun(call.spoken_turns(track, audio[track])) for track in audio}
            await asyncio.gather(*(stream_track(url, audio[t], runs[t], speed, query) for t in audio))
            for track, run in runs.items():
                played.append((run, call.references.get(track, ""), run.t0 + call.duration / speed))

    cpu0 = _cpu_seconds(server_pid) if server_pid else 0.0
    before = await recognizer_counters(url)
    await asyncio.gather(*(slot(c) for c in range(n)))
    wall = time.monotonic() - loop_start
    cpu = _cpu_seconds(server_pid) - cpu0 if server_pid else 0.0
    after = await recognizer_counters(url)
    lat = Latency()
    live = ZERO
    scored = 0
    for run, ref, ended in played:
        lat.add(analyse(run, speed, until=window_end))
        if ended <= window_end:
            live = live + wer(ref, run.final_text())
            scored += 1
    summary: dict[str, Any] = {"calls": n, "streams": 2 * n, "window_seconds": seconds, "wall_seconds": round(wall, 2),
                               "calls_scored": scored // 2, "duplicate_lead_s": duplicate_lead}  # fmt: skip
    summary["live_wer"] = round(live.rate, 4)  # the accuracy kept under this load
    summary["recognizer"] = {k: round(after[k] - before.get(k, 0.0), 3) for k in after}
    for name, values in (("ttfp", lat.ttfp), ("partial_latency", lat.partial), ("final_lag", lat.final)):
        summary[name] = {"p50": pct(values, 50), "p95": pct(values, 95), "n": len(values)}
    if server_pid:
        summary["server_cpu_seconds"] = round(cpu, 2)
        summary["server_cores"] = round(cpu / wall, 2)  # the tail after the window holds fewer calls
    return summary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _server(model: str, workers: int, final_model: str) -> Any:
    port = _free_port()
    code = (
        "from bridge.embedded.server import EmbeddedConfig, serve; "
        f"serve(EmbeddedConfig(model={model!r}, workers={workers}, final_model={final_model!r}), '127.0.0.1', {port})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError("recognizer server exited")
            time.sleep(0.3)
        yield f"ws://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def render(rows: list[dict[str, Any]], ramp: list[dict[str, Any]], best: int | None) -> str:
    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1000:.0f}"

    head = ("| set | calls | audio s | live WER | batch WER | live/batch | first partial p50 | partial p95 "
            "| final lag p50 / p95 | churn | looping partials |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        ratio = "-" if r["live_over_batch"] is None else f"{r['live_over_batch']:.2f}"
        lines.append(
            f"| {r['set']} | {r['calls']} | {r['audio_seconds']:.0f} | {r['live_wer'] * 100:.1f} % "
            f"| {r['batch_wer'] * 100:.1f} % | {ratio} | {ms(r['ttfp_p50'])} ms | {ms(r['partial_latency_p95'])} ms "
            f"| {ms(r['final_lag_p50'])} / {ms(r['final_lag_p95'])} ms | {r['partial_churn']} "
            f"| {r['looping_partials']}/{r['partials']} |"
        )
    if ramp:
        lines += ["", "| concurrent calls | streams | first partial p50 | partial p95 | final lag p50 / p95 | live WER "
                  "| finals | server cores |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for s in ramp:
            lines.append(
                f"| {s['calls']} | {s['streams']} | {ms(s['ttfp']['p50'])} ms | {ms(s['partial_latency']['p95'])} ms "
                f"| {ms(s['final_lag']['p50'])} / {ms(s['final_lag']['p95'])} ms | {s['live_wer'] * 100:.1f} % "
                f"| {s['final_lag']['n']} | {s.get('server_cores', '-')} |"
            )
    if best is not None:
        lines.append(f"\nlargest N with p95 final lag < 1.5 s: {best} calls ({2 * best} streams)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    sets = load_sets(args.fixtures, [s for s in args.sets.split(",") if s] or None)
    query = QUERY + "".join(f"&keyterm={k}" for k in args.keyterm)
    report: dict[str, Any] = {
        "command": args.argv, "model": args.model, "final_model": args.final_model, "workers": args.workers,
        "speed": args.speed, "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "load_average_before": os.getloadavg(), "python": platform.python_version(),
    }  # fmt: skip
    rows: list[dict[str, Any]] = []
    ramp: list[dict[str, Any]] = []
    best: int | None = None
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url, None
        else:
            url, pid = stack.enter_context(_server(args.model, args.workers, args.final_model))
        if not args.no_accuracy:
            print(f"accuracy: {sum(len(c) for c in sets.values())} calls, one at a time", file=sys.stderr)
            scores = asyncio.run(score_calls(url, sets, args.speed, query))
            if args.batch_model:
                score_batch(sets, scores, args.batch_model)
            rows = [s.row(name) for name, s in scores.items()]
            total = SetScore()
            for s in scores.values():
                total.calls += s.calls
                total.audio += s.audio
                total.live, total.batch = total.live + s.live, total.batch + s.batch
                total.latency.add(s.latency)
                total.final_loops += s.final_loops
            rows.append(total.row("all"))
            report["examples"] = {name: s.examples for name, s in scores.items()}
        if args.ramp or args.calls > 1:
            pool = [c for calls in load_sets(args.fixtures, [args.capacity_set]).values() for c in calls]
            counts = list(range(args.min_calls, args.max_calls + 1)) if args.ramp else [args.calls]
            for n in counts:
                summary = asyncio.run(run_concurrent(url, pool, n, 1.0, query, pid, args.duplicate_lead, args.seconds))
                ramp.append(summary)
                print(json.dumps(summary), file=sys.stderr, flush=True)
                lag95 = summary["final_lag"]["p95"]
                if lag95 is not None and lag95 < 1.5:
                    best = n
                elif args.ramp:
                    break
    report["sets"] = rows
    report["ramp"] = ramp
    report["max_calls_p95_final_lag_under_1_5s"] = best
    report["load_average_after"] = os.getloadavg()
    text = render(rows, ramp, best)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_recognizer.json").write_text(json.dumps(report, indent=1))
        (out / "report.md").write_text(text + "\n")
    return 0
