"""``bridge bench recognizer``: stream telephony fixtures at real-time pace, N calls at once.

Each call is a two-track fixture (caller and agent), streamed as two ``/v1/listen`` connections the
way the bridge does it. Latencies are measured against the wall-clock instant the relevant audio was
sent; accuracy against the fixture's reference turns (:mod:`bridge.wer`).
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
from websockets.asyncio.client import connect

from bridge.audio import Upsampler, mulaw_to_pcm16, pcm16_to_float, read_wav
from bridge.bench.common import call_fixture
from bridge.recognizers.deepgram import wire as dg
from bridge.wer import align, normalize

CALLS = ("support_call", "short_call")
QUERY = (
    "model=nova-3&encoding=mulaw&sample_rate=8000&channels=1&interim_results=true&endpointing=300"
    "&utterance_end_ms=1000&vad_events=true&punctuate=true&smart_format=true&language=en-US"
)
FRAME = 160  # 20 ms of 8 kHz mu-law, as Twilio sends it


@dataclass
class TrackRun:
    turns: list[dict[str, Any]]
    t0: float = 0.0
    received: list[tuple[float, dg.ServerMessage]] = field(default_factory=list)

    def sent_at(self, audio_time: float) -> float:
        """Wall time at which the audio at ``audio_time`` had been sent (real-time pacing)."""
        return self.t0 + audio_time


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return round(s[k], 3)


async def stream_track(url: str, audio: bytes, run: TrackRun, speed: float) -> None:
    async with connect(f"{url}/v1/listen?{QUERY}", max_size=None) as ws:

        async def reader() -> None:
            with contextlib.suppress(websockets.ConnectionClosedError):
                async for raw in ws:
                    run.received.append((time.monotonic(), dg.decode_server(raw)))

        task = asyncio.create_task(reader())
        run.t0 = time.monotonic()
        step = FRAME / 8000 / speed
        for k, i in enumerate(range(0, len(audio), FRAME)):
            delay = run.t0 + k * step - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await ws.send(audio[i : i + FRAME])
        await ws.send(dg.encode(dg.CloseStream()).decode())
        await task


def analyse(run: TrackRun, speed: float) -> dict[str, Any]:
    scale = 1.0 / speed
    results = [(t, m) for t, m in run.received if isinstance(m, dg.Results)]
    out: dict[str, list[float]] = {"ttfp_onset": [], "ttfp_first_audio": [], "partial_latency": [], "final_lag": []}
    edits = ref_words = rewritten = shown = 0
    first_partial = next((t for t, m in results if m.channel.alternatives[0].transcript), None)
    if first_partial is not None:
        out["ttfp_first_audio"].append(first_partial - run.t0)
    prev: dict[float, list[str]] = {}
    for t, m in results:
        words = m.channel.alternatives[0].transcript.split()
        if not m.is_final and words:
            out["partial_latency"].append(t - (run.t0 + (m.start + m.duration) * scale))
            before = prev.get(m.start, [])
            k = 0
            for a, b in zip(before, words, strict=False):
                if a != b:
                    break
                k += 1
            rewritten += len(before) - k
            shown += len(before)
            prev[m.start] = words
    hyp_all: list[str] = []
    for turn in run.turns:
        s, e = float(turn["start"]), float(turn["end"])
        overlapping = [
            (t, m)
            for t, m in results
            if m.channel.alternatives[0].transcript and m.start < e and m.start + m.duration > s
        ]
        if overlapping:
            out["ttfp_onset"].append(overlapping[0][0] - (run.t0 + s * scale))
        finals = [(t, m) for t, m in overlapping if m.is_final]
        if finals:
            out["final_lag"].append(finals[-1][0] - (run.t0 + e * scale))
    for _, m in results:
        if m.is_final:
            hyp_all.extend(normalize(m.channel.alternatives[0].transcript))
    ref_all = [w for turn in run.turns for w in normalize(str(turn["text"]))]
    scored = align(ref_all, hyp_all)
    edits, ref_words = scored.errors, scored.ref_words
    return {**out, "edits": edits, "ref_words": ref_words, "rewritten": rewritten, "shown": shown}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_calls(
    url: str, n: int, speed: float, fixture: str | None, server_pid: int | None, fixtures: str = "fixtures"
) -> dict[str, Any]:
    runs: list[TrackRun] = []
    jobs = []
    audio_seconds = 0.0
    for c in range(n):
        name = fixture or CALLS[c % len(CALLS)]
        wav_path = call_fixture(name, fixtures)
        wav = read_wav(wav_path)
        meta = json.loads(wav_path.with_suffix(".json").read_text())
        for ch, track in enumerate(meta["channels"]):
            run = TrackRun([t for t in meta["turns"] if t["track"] == track])
            runs.append(run)
            jobs.append(stream_track(url, wav.channel_bytes(ch), run, speed))
            audio_seconds += wav.duration
    cpu0 = _cpu_seconds(server_pid) if server_pid else None
    wall0 = time.monotonic()
    await asyncio.gather(*jobs)
    wall = time.monotonic() - wall0
    cpu = (_cpu_seconds(server_pid) - cpu0) if server_pid and cpu0 is not None else None
    per = [analyse(r, speed) for r in runs]
    merged: dict[str, list[float]] = {}
    for p in per:
        for k in ("ttfp_onset", "ttfp_first_audio", "partial_latency", "final_lag"):
            merged.setdefault(k, []).extend(p[k])
    edits = sum(p["edits"] for p in per)
    ref = sum(p["ref_words"] for p in per)
    summary: dict[str, Any] = {"calls": n, "streams": len(runs), "wall_seconds": round(wall, 2)}
    for k, v in merged.items():
        summary[k] = {"p50": pct(v, 50), "p95": pct(v, 95), "n": len(v)}
    summary["wer"] = round(edits / ref, 4) if ref else None
    shown = sum(p["shown"] for p in per)
    summary["partial_churn"] = round(sum(p["rewritten"] for p in per) / shown, 4) if shown else None
    if cpu is not None:
        summary["server_cpu_seconds"] = round(cpu, 2)
        summary["cpu_per_call_seconds_per_audio_second"] = round(cpu / (audio_seconds / 2), 4)
        summary["real_time_factor"] = round(cpu / audio_seconds, 4)
    return summary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def _server(model: str, workers: int) -> Any:
    port = _free_port()
    code = (
        "from bridge.embedded.server import EmbeddedConfig, serve; "
        f"serve(EmbeddedConfig(model={model!r}, workers={workers}), '127.0.0.1', {port})"
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


def main(args: argparse.Namespace) -> int:
    report: dict[str, Any] = {
        "model": args.model,
        "workers": args.workers,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "runs": [],
    }
    with contextlib.ExitStack() as stack:
        if args.url:
            url, pid = args.url, None
        else:
            url, pid = stack.enter_context(_server(args.model, args.workers))
        counts = list(range(args.min_calls, args.max_calls + 1)) if args.ramp else [args.calls]
        best = 0
        for n in counts:
            summary = asyncio.run(run_calls(url, n, args.speed, args.fixture, pid, args.fixtures))
            report["runs"].append(summary)
            print(json.dumps(summary))
            lag95 = summary["final_lag"]["p95"]
            if lag95 is not None and lag95 < 1.5:
                best = n
            elif args.ramp:
                break
        report["max_calls_p95_final_lag_under_1_5s"] = best
        if args.clips:
            report["clips"] = _offline_clips(args.model, args.clips, args.fixtures)
            print(json.dumps(report["clips"]))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_recognizer.json").write_text(json.dumps(report, indent=1))
    return 0


def _offline_clips(model: str, k: int, fixtures: str) -> dict[str, Any]:
    """Offline WER of whole clips through the same engine (the accuracy ceiling of streaming)."""
    from bridge.embedded.engine import load_engine

    clips = json.loads((Path(fixtures) / "audio" / "clips.json").read_text())[:k]
    out: dict[str, Any] = {}
    for name in dict.fromkeys((model, "base")):
        engine = load_engine(name, workers=1)
        edits = ref = 0
        for clip in clips:
            wav = read_wav(Path(fixtures) / "audio" / clip["file"])
            audio = Upsampler()(pcm16_to_float(mulaw_to_pcm16(wav.data)))
            hyp = engine.transcribe(audio, beam_size=5)
            r = normalize(clip["text"])
            edits += align(r, normalize(hyp.text)).errors
            ref += len(r)
        out[f"offline_wer_{name}_beam5"] = round(edits / ref, 4)
    return out


