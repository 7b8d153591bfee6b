"""``bridge bench outage``: how long the live transcript takes to be current again after a recognizer
outage, at real-time pace against a recognizer that ingests at most 1.25x real time (Deepgram's
documented limit, :class:`~bridge.testing.ScriptedDeepgramServer`).

One track plays through an in-process bridge at Twilio's pace; the recognizer is down for
``--outage`` seconds after ``--before``; a live subscriber times every final. Reported:

- time to current: from the recognizer being back to the first final from which on every final
  arrives within ``--current-lag`` of its audio (documented bound: ``--catchup`` seconds);
- replayed and skipped audio (what went to the batch pass only), lost and doubled finals;
- with ``--fallback``: the recognizer stays down, the track moves to a scripted ElevenLabs fallback
  after ``--fallback-after`` seconds, and the time from the outage to its first final is reported.

Run it on an idle machine: the figures are wall-clock times.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import secrets
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import websockets

from bridge import events
from bridge.bench import common
from bridge.bench.common import progress
from bridge.recognizers.deepgram.live import DEEPGRAM_INGEST_RATE
from bridge.recognizers.resilience import RetryPolicy
from bridge.server import running_bridge
from bridge.settings import Settings
from bridge.testing import ScriptedDeepgramServer, ScriptedScribeServer, TwilioStream, scripted_finals

BPS, FRAME = 8000, 160


class OutageResult(msgspec.Struct):
    command: str
    machine: common.Machine
    before_s: float
    outage_s: float
    after_s: float
    catchup_budget_s: float
    fallback: bool
    time_to_current_s: float | None
    first_final_after_outage_s: float | None
    replayed_s: float
    skipped_s: float
    gaps: list[events.LiveGap]
    served: list[events.ServedSpan]
    finals: int
    lost: int
    doubled: int


def _speech(seconds: float) -> bytes:
    rnd = random.Random(15)
    return bytes(rnd.randrange(0, 255) for _ in range(int(seconds * BPS)))


async def _play(stream: TwilioStream, audio: bytes, sent_at: list[float]) -> None:
    loop = asyncio.get_running_loop()
    began = loop.time()
    for i in range(0, len(audio), FRAME):
        delay = began + i / BPS - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await stream.media("inbound", i // 8, audio[i : i + FRAME])
        sent_at.append(time.monotonic())


async def _subscribe(ws_base: str, call_sid: str, arrivals: list[tuple[float, events.Final]]) -> None:
    for _ in range(400):
        try:
            async with websockets.connect(f"{ws_base}/calls/{call_sid}/live") as sub:
                async for raw in sub:
                    event = events.decode(raw)
                    if isinstance(event, events.Final):
                        arrivals.append((time.monotonic(), event))
                    elif isinstance(event, events.CallEnded):
                        return
        except websockets.ConnectionClosedError:
            await asyncio.sleep(0.025)


def _expected(audio: bytes, gaps: list[events.LiveGap]) -> list[tuple[float, float, str]]:
    """A clean run's finals, with the budget's gap taken out (the words after it restart at its end)."""
    rows = [(round(s, 3), round(e, 3), w) for s, e, w in scripted_finals(audio)]
    for gap in (g for g in gaps if g.reason == "catchup"):
        cut = round(gap.end * BPS)
        after = [(round(gap.end + s, 3), round(gap.end + e, 3), w) for s, e, w in scripted_finals(audio[cut:])]
        rows = [r for r in rows if r[1] <= gap.start + 1e-6] + after
    return rows


async def _run(args: argparse.Namespace) -> OutageResult:
    audio = _speech(args.before + args.outage + args.after)
    call_sid = "CA" + secrets.token_hex(16)
    token = secrets.token_hex(8)
    # Reconnect attempts every second at most, so the recovery measured is the catch-up, not where
    # the backoff happened to be; the failure cap is lifted to match (30 quick failures would end the
    # stream as failed, which production's 30 s backoff cap never reaches in a 30 s outage).
    policy = RetryPolicy(catchup_seconds=args.catchup, fallback_after=args.fallback_after, backoff_cap=1.0,
                         max_failures=1_000)  # fmt: skip
    sent_at: list[float] = []
    arrivals: list[tuple[float, events.Final]] = []
    async with (
        ScriptedDeepgramServer(ingest_rate=DEEPGRAM_INGEST_RATE) as primary,
        ScriptedScribeServer() as scribe,
    ):
        with tempfile.TemporaryDirectory() as tmp:
            base = Settings.from_env()
            settings = dataclasses.replace(
                base, port=0, twilio_auth_token=token, recording_dir=Path(tmp),
                redis_url=args.redis_url or base.redis_url, redis_dir=Path(tmp) / "redis",
                redis_prefix=f"bench-outage-{secrets.token_hex(4)}", recognizer="deepgram",
                recognizer_url=primary.url, fallback_recognizer="elevenlabs" if args.fallback else None,
                fallback_recognizer_url=scribe.url,
            )  # fmt: skip
            async with running_bridge(settings, retry_policy=policy) as (_app, http):
                ws = http.replace("http", "ws")
                async with TwilioStream(ws + "/twilio/media", call_sid, auth_token=token) as stream:
                    subscriber = asyncio.create_task(_subscribe(ws, call_sid, arrivals))
                    player = asyncio.create_task(_play(stream, audio, sent_at))
                    await asyncio.sleep(args.before)
                    progress(f"recognizer down for {args.outage:.0f} s")
                    await primary.stop()
                    down_at = time.monotonic()
                    await asyncio.sleep(args.outage)
                    if not args.fallback:
                        await primary.start()
                        progress("recognizer back")
                    back_at = time.monotonic()
                    await player
                    await stream.stop()
                await asyncio.wait_for(subscriber, 60)
                async with httpx.AsyncClient(base_url=http, timeout=10) as client:
                    info = (await client.get(f"/calls/{call_sid}")).json()
                    metrics = (await client.get("/metrics")).text
    gaps = msgspec.convert(info.get("gaps", {}).get("inbound", []), list[events.LiveGap])
    served = msgspec.convert(info.get("served", {}).get("inbound", []), list[events.ServedSpan])

    def lag(final: events.Final, at: float) -> float:
        return at - sent_at[min(len(sent_at) - 1, max(0, round(final.end * BPS) // FRAME - 1))]

    after = [(at, f) for at, f in arrivals if at >= (back_at if not args.fallback else down_at)]
    current: float | None = None
    for i, (at, _) in enumerate(after):
        if all(lag(f, t) <= args.current_lag for t, f in after[i:]):
            current = at - back_at
            break
    stored = [(f.start, f.end, f.text) for _, f in arrivals]
    expected = _expected(audio, gaps)
    return OutageResult(
        command=args.command, machine=common.machine(), before_s=args.before, outage_s=args.outage,
        after_s=args.after, catchup_budget_s=args.catchup, fallback=args.fallback,
        time_to_current_s=None if current is None or args.fallback else round(current, 3),
        first_final_after_outage_s=round(after[0][0] - down_at, 3) if after else None,
        replayed_s=_metric(metrics, "bridge_recognizer_replayed_seconds_total"),
        skipped_s=_metric(metrics, "bridge_recognizer_skipped_audio_seconds_total"),
        gaps=gaps, served=served, finals=len(stored), lost=len(set(expected) - set(stored)),
        doubled=len(stored) - len(set(stored)),
    )  # fmt: skip


def _metric(text: str, name: str) -> float:
    return next((float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)


def render(r: OutageResult) -> str:
    def secs(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f} s"

    rows = [
        ("outage", f"{r.outage_s:.0f} s after {r.before_s:.0f} s" + (" (primary never back)" if r.fallback else "")),
        ("catch-up budget (BRIDGE_CATCHUP_SECONDS)", f"{r.catchup_budget_s:.0f} s"),
        ("time to current after the recognizer is back", secs(r.time_to_current_s)),
        ("first final after the outage began", secs(r.first_final_after_outage_s)),
        ("replayed / left to the batch pass", f"{r.replayed_s:.2f} s / {r.skipped_s:.2f} s"),
        ("gaps", ", ".join(f"{g.start:.2f}-{g.end:.2f} s ({g.reason})" for g in r.gaps) or "none"),
        ("served", ", ".join(f"{s.recognizer} {s.start:.2f}-{s.end or 0:.2f} s" for s in r.served)),
        ("finals / lost / doubled", f"{r.finals} / {r.lost} / {r.doubled}"),
    ]  # fmt: skip
    table = common.md_table(("", ""), rows)
    return f"# Recovery after a recognizer outage\n\n`{r.command}`\n\n{table}\n\n{common.machine_line(r.machine)}\n"


def main(args: argparse.Namespace) -> int:
    args.command = args.argv
    out = common.out_dir("outage", args.out)
    result = asyncio.run(_run(args))
    js, md = common.write_report(out, result, render(result))
    progress(f"wrote {js}, {md}")
    print(render(result))
    return 0 if result.lost == 0 and result.doubled == 0 else 1


__all__ = ["OutageResult", "main", "render"]
