"""``bridge bench e2e``: fixture calls through a running bridge, timed at a live subscriber.

Each run replays a fixture call (``fixtures/calls/*.wav`` with its reference ``.json`` turns) as a
signed Twilio Media Stream at real-time pace (:func:`bridge.replay.replay`, whose ``on_frame`` hook
gives every frame's send time), while a WebSocket subscriber records when each event arrives.
All times are ``time.monotonic()`` in this one process.

- partial latency: arrival of a partial minus the send time of the frame holding its last audio;
- time to first partial: per track, from the track's first frame (as the bridge's own histogram)
  and from the first reference turn's start (what a person notices);
- final lag: arrival of a final minus the send time of the frame holding its last audio, and per
  reference turn, the arrival of the last final overlapping the turn minus the send of its end;
- WER of the stored finals (``GET /calls/{sid}/transcript``) against the reference turns, per track;
- churn: share of partial updates that rewrite (rather than extend) the previous partial's words,
  and words rewritten per final word.

Defaults to the embedded recognizer and an embedded redis, like a fresh clone's ``bridge demo``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import secrets
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import websockets

from bridge import events, wer
from bridge.bench import common
from bridge.bench.common import HistogramQuantiles, Percentiles, progress
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.twilio.replay import replay

FRAME = 0.02


class Turn(msgspec.Struct):
    track: str
    start: float
    end: float
    text: str


class Reference(msgspec.Struct):
    duration: float
    turns: list[Turn]


class RunResult(msgspec.Struct):
    call: str
    call_sid: str
    frames_sent: int
    partials: int
    finals: int
    wer: float
    wer_errors: int
    wer_words: int
    churn_rewrites: float
    churn_words_per_final_word: float
    ttfp_from_first_frame_ms: dict[str, float]
    ttfp_from_speech_ms: dict[str, float]


class E2EResult(msgspec.Struct):
    kind: str
    command: str
    machine: common.Machine
    recognizer: str
    runs: list[RunResult]
    partial_latency: Percentiles
    final_lag: Percentiles
    final_lag_after_speech_end: Percentiles
    ttfp_from_first_frame: Percentiles
    ttfp_from_speech: Percentiles
    wer: float
    churn_rewrites: float
    #: The bridge's own /metrics histograms over the same runs (bucket-interpolated, ms).
    metrics_partial_latency: HistogramQuantiles
    metrics_final_lag: HistogramQuantiles
    metrics_time_to_first_partial: HistogramQuantiles
    metrics_frame_handling: HistogramQuantiles


@dataclasses.dataclass
class _Samples:
    partial: list[float] = dataclasses.field(default_factory=list)
    final: list[float] = dataclasses.field(default_factory=list)
    final_after_speech: list[float] = dataclasses.field(default_factory=list)
    ttfp_frame: list[float] = dataclasses.field(default_factory=list)
    ttfp_speech: list[float] = dataclasses.field(default_factory=list)


def churn(partials_and_finals: list[tuple[bool, str]]) -> tuple[int, int, int, int]:
    """(partial updates, rewrites, words rewritten, final words) of one track's event sequence.

    A partial "rewrites" when its words do not start with the previous partial's words of the same
    utterance; the words of the previous partial past the common prefix count as rewritten.
    """
    updates = rewrites = rewritten = final_words = 0
    prev: list[str] = []
    for is_final, text in partials_and_finals:
        words = wer.normalize(text)
        if is_final:
            final_words += len(words)
            prev = []
            continue
        updates += 1
        common_len = 0
        for a, b in zip(prev, words, strict=False):
            if a != b:
                break
            common_len += 1
        if common_len < len(prev):
            rewrites += 1
            rewritten += len(prev) - common_len
        prev = words
    return updates, rewrites, rewritten, final_words


async def _one_run(http: str, token: str, wav: Path, ref: Reference, samples: _Samples, index: int,
                   speed: float) -> RunResult:
    ws_base = http.replace("http://", "ws://")
    call_sid = "CA" + secrets.token_hex(16)
    sent: dict[str, dict[int, float]] = {"inbound": {}, "outbound": {}}

    async def on_frame(track: str, timestamp_ms: int, at: float) -> None:
        sent[track][timestamp_ms // 20] = at

    def send_time(track: str, end: float) -> float | None:
        return sent[track].get(int(max(end - 1e-6, 0.0) / FRAME))

    received: list[tuple[float, events.LiveEvent]] = []

    async def subscribe() -> None:
        async with httpx.AsyncClient(base_url=http, timeout=10) as client:
            for _ in range(3000):  # the call exists once the replay's start went through
                if (await client.get(f"/calls/{call_sid}")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
        async with websockets.connect(f"{ws_base}/calls/{call_sid}/live") as sub:
            async for raw in sub:
                ev = events.decode(raw)
                received.append((time.monotonic(), ev))
                if isinstance(ev, events.CallEnded):
                    return

    sub = asyncio.create_task(subscribe())
    result = await replay(wav, url=f"{ws_base}/twilio/media", auth_token=token, call_sid=call_sid,
                          speed=speed, on_frame=on_frame)
    await asyncio.wait_for(sub, 60)
    async with httpx.AsyncClient(base_url=http, timeout=10) as client:
        stored = msgspec.json.decode((await client.get(f"/calls/{call_sid}/transcript",
                                                       params={"format": "json"})).content, type=list[events.Final])

    per_track: dict[str, list[tuple[bool, str]]] = {"inbound": [], "outbound": []}
    first_partial: dict[str, float] = {}
    finals_at: dict[str, list[tuple[float, events.Final]]] = {"inbound": [], "outbound": []}
    n_partials = n_finals = 0
    for at, ev in received:
        if isinstance(ev, events.Partial):
            n_partials += 1
            per_track[ev.track].append((False, ev.text))
            first_partial.setdefault(ev.track, at)
            t = send_time(ev.track, ev.end)
            if t is not None:
                samples.partial.append(at - t)
        elif isinstance(ev, events.Final):
            n_finals += 1
            per_track[ev.track].append((True, ev.text))
            finals_at[ev.track].append((at, ev))
            t = send_time(ev.track, ev.end)
            if t is not None:
                samples.final.append(at - t)
    for turn in ref.turns:
        overlapping = [at for at, f in finals_at[turn.track] if f.end > turn.start and f.start < turn.end]
        t = send_time(turn.track, turn.end)
        if overlapping and t is not None:
            samples.final_after_speech.append(max(overlapping) - t)
    ttfp_frame: dict[str, float] = {}
    ttfp_speech: dict[str, float] = {}
    for track, at in first_partial.items():
        first = sent[track].get(0)
        if first is not None:
            ttfp_frame[track] = round((at - first) * 1000, 1)
            samples.ttfp_frame.append(at - first)
        turns = [t.start for t in ref.turns if t.track == track]
        onset = send_time(track, min(turns)) if turns else None
        if onset is not None:
            ttfp_speech[track] = round((at - onset) * 1000, 1)
            samples.ttfp_speech.append(at - onset)
    pairs = [
        (" ".join(t.text for t in ref.turns if t.track == track), " ".join(f.text for f in stored if f.track == track))
        for track in ("inbound", "outbound")
    ]
    total = wer.corpus_wer(pairs)
    updates = rewrites = rewritten = final_words = 0
    for seq in per_track.values():
        u, r, w, f = churn(seq)
        updates, rewrites, rewritten, final_words = updates + u, rewrites + r, rewritten + w, final_words + f
    run = RunResult(
        call=wav.stem, call_sid=call_sid, frames_sent=sum(result.frames_sent.values()), partials=n_partials,
        finals=len(stored), wer=round(total.rate, 4), wer_errors=total.errors, wer_words=total.ref_words,
        churn_rewrites=round(rewrites / updates, 4) if updates else 0.0,
        churn_words_per_final_word=round(rewritten / final_words, 4) if final_words else 0.0,
        ttfp_from_first_frame_ms=ttfp_frame, ttfp_from_speech_ms=ttfp_speech,
    )
    progress(f"run {index}: {wav.stem}: {n_partials} partials, {len(stored)} finals stored, WER {run.wer:.1%}, "
             f"churn {run.churn_rewrites:.0%}, first partial after speech {ttfp_speech}")
    return run


async def _run(args: argparse.Namespace) -> tuple[E2EResult, _Samples]:
    token = secrets.token_hex(16)
    base = Settings.from_env()
    wavs = [common.call_fixture(name, args.fixtures) for name in args.calls.split(",")]
    refs = {w: msgspec.json.decode(w.with_suffix(".json").read_bytes(), type=Reference) for w in wavs}
    samples = _Samples()
    runs: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        settings = dataclasses.replace(
            base, port=0, twilio_auth_token=token, public_url="", recording_dir=Path(tmp) / "rec",
            recognizer_url=args.recognizer_url or base.recognizer_url,
            redis_url=args.redis_url or base.redis_url,
            redis_prefix="bench-" + secrets.token_hex(4), log_level="warning",
        )
        what = (f"recognizer at {settings.recognizer_url}" if settings.recognizer_url
                else f"embedded recognizer ({settings.embedded_model})")
        progress(f"starting the bridge with the {what}, redis {'at REDIS_URL' if settings.redis_url else 'embedded'}")
        async with running_bridge(settings) as (_app, http):
            progress(f"bridge up at {http}; {args.runs} run(s) of {', '.join(w.stem for w in wavs)} at real time")
            for i in range(args.runs):
                wav = wavs[i % len(wavs)]
                runs.append(await _one_run(http, token, wav, refs[wav], samples, i + 1, args.speed))
            async with httpx.AsyncClient(base_url=http, timeout=10) as client:
                text = (await client.get("/metrics")).text
    words = sum(r.wer_words for r in runs)
    result = E2EResult(
        kind="e2e", command=args.command, machine=common.machine(), recognizer=what, runs=runs,
        partial_latency=common.summarize(samples.partial), final_lag=common.summarize(samples.final),
        final_lag_after_speech_end=common.summarize(samples.final_after_speech),
        ttfp_from_first_frame=common.summarize(samples.ttfp_frame),
        ttfp_from_speech=common.summarize(samples.ttfp_speech),
        wer=round(sum(r.wer_errors for r in runs) / words, 4) if words else 0.0,
        churn_rewrites=round(sum(r.churn_rewrites for r in runs) / len(runs), 4) if runs else 0.0,
        metrics_partial_latency=common.histogram_quantiles(text, "bridge_partial_latency_seconds"),
        metrics_final_lag=common.histogram_quantiles(text, "bridge_final_lag_seconds"),
        metrics_time_to_first_partial=common.histogram_quantiles(text, "bridge_time_to_first_partial_seconds"),
        metrics_frame_handling=common.histogram_quantiles(text, "bridge_frame_handling_seconds"),
    )
    return result, samples


def render(r: E2EResult) -> str:
    def row(name: str, p: Percentiles, m: HistogramQuantiles | None) -> list[object]:
        bridge = f"{m.p50:.0f} / {m.p95:.0f} / {m.p99:.0f} (n={m.count})" if m else "-"
        return [name, p.n, f"{p.p50:.0f}", f"{p.p95:.0f}", f"{p.p99:.0f}", bridge]

    table = common.md_table(
        ["measure (ms)", "n", "p50", "p95", "p99", "/metrics p50 / p95 / p99"],
        [
            row("partial latency (at subscriber)", r.partial_latency, r.metrics_partial_latency),
            row("final lag (at subscriber)", r.final_lag, r.metrics_final_lag),
            row("final lag after end of speech (reference turns)", r.final_lag_after_speech_end, None),
            row("time to first partial, from first frame", r.ttfp_from_first_frame, r.metrics_time_to_first_partial),
            row("time to first partial, from speech onset", r.ttfp_from_speech, None),
        ],
    )
    runs = common.md_table(
        ["run", "call", "partials", "finals", "WER", "churn (rewrites)", "rewritten words / final word"],
        [[i + 1, x.call, x.partials, x.finals, f"{x.wer:.1%}", f"{x.churn_rewrites:.0%}",
          f"{x.churn_words_per_final_word:.2f}"] for i, x in enumerate(r.runs)],
    )
    fh = r.metrics_frame_handling
    return f"""# Bridge end-to-end benchmark

`{r.command}`

Machine: {common.machine_line(r.machine)}

Recognizer: {r.recognizer}. Twilio side: `bridge.replay` at real time (20 ms frames, both tracks, signed).
Latencies are measured at a live WebSocket subscriber against each frame's send time (one process,
monotonic clock); the `/metrics` column is the bridge's own histogram (recognizer result received vs
frame forwarded, bucket-interpolated), which excludes Redis and the subscriber hop.

{table}

WER of stored finals vs reference (lowercase, no punctuation, numbers spelled out; `bridge.wer`):
**{r.wer:.1%}** over {len(r.runs)} runs. Mean churn: {r.churn_rewrites:.0%} of partial updates rewrite earlier words.
Bridge frame handling (`bridge_frame_handling_seconds`): p50 {fh.p50:.2f} ms, p99 {fh.p99:.2f} ms (n={fh.count}).

{runs}

![latency distributions](latency_distributions.png)
"""


def main(args: argparse.Namespace) -> int:
    args.command = args.argv
    out = common.out_dir("e2e", args.out)
    result, samples = asyncio.run(_run(args))
    common.plot_distributions(
        out / "latency_distributions.png",
        {"partial latency": samples.partial, "final lag": samples.final,
         "final lag after speech end": samples.final_after_speech},
        "end-to-end latency at a live subscriber",
    )
    js, md = common.write_report(out, result, render(result))
    progress(f"wrote {js}, {md}")
    print(render(result))
    return 0
