"""``bridge worker``: consumes recording jobs and stores each call's compliance transcript.

Delivery is at-least-once through the consumer group of ``Keys.recordings``:

* a job is read with XREADGROUP and acked only in the same transaction that stores its result;
* while a job is in hand its entry is re-claimed periodically (heartbeat), so only the jobs of a
  worker that died go idle, and those are taken over with XAUTOCLAIM after ``claim_idle_ms``;
* a failed job stays pending and is scheduled for a retry (``Keys.recordings_retry``, exponential
  backoff); after ``max_attempts`` failures it moves to ``Keys.recordings_dead`` with the reason;
* results are one key per call, tagged with the recording's identity, so a job seen twice (a
  redelivery after a crash between store and ack) stores one result and is not transcribed again;
* SIGTERM lets the job in hand finish within ``grace_s``, else releases it (idle set so that another
  worker claims it at once).

The consumer name is ``host:pid``, so workers on several hosts share one group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
import redis.asyncio as aioredis
import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Histogram

from bridge import compliance
from bridge.batch import (
    BatchEngine,
    EngineError,
    batch_json_path,
    make_engine,
    read_recording,
    transcribe_recording,
    write_json,
)
from bridge.jobs import RecordingJob
from bridge.keys import Keys

logger = logging.getLogger(__name__)

_WER_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
_JOB_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class DownloadError(RuntimeError):
    """The recording could not be fetched from Twilio."""


class WorkerMetrics:
    """Prometheus metrics of the batch worker (on an injectable registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.jobs = Counter(
            "bridge_batch_jobs_total",
            "Recording jobs handled, by outcome (done, duplicate, retry, dead, released)",
            ["outcome"],
            registry=r,
        )
        self.claimed = Counter(
            "bridge_batch_jobs_claimed_total", "Jobs taken over from a dead or stopped worker", registry=r
        )
        self.job_seconds = Histogram(
            "bridge_batch_job_seconds", "Wall time to transcribe and store one job", buckets=_JOB_BUCKETS, registry=r
        )
        self.audio_seconds = Counter(
            "bridge_batch_audio_seconds_total", "Audio transcribed by the batch pass", registry=r
        )
        self.live_wer = Histogram(
            "bridge_batch_live_wer",
            "WER of the live transcript against the batch one, per call (track=all) and per track",
            ["track"],
            buckets=_WER_BUCKETS,
            registry=r,
        )
        self.flagged = Counter(
            "bridge_batch_flagged_calls_total", "Calls whose live transcript diverged beyond the threshold", registry=r
        )


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_key(job: RecordingJob) -> str:
    """Identity of the recording a job is about (a result stored for it makes the job a duplicate)."""
    return f"{job.source}:{job.recording_url or job.path}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(raw: Any) -> list[tuple[str, dict[str, str]]]:
    """Stream entries as redis-py returns them -> ``[(id, fields)]`` (fields empty for a deleted entry)."""
    return [(_s(cid), {_s(a): _s(b) for a, b in (fields or {}).items()}) for cid, fields in raw or []]


class Worker:
    """One consumer of the recording jobs stream."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        engine: BatchEngine,
        *,
        consumer: str | None = None,
        block_ms: int = 2000,
        claim_idle_ms: int = 120_000,
        heartbeat_s: float | None = None,
        max_attempts: int = 5,
        backoff_base_s: float = 10.0,
        backoff_max_s: float = 900.0,
        grace_s: float = 30.0,
        wer_threshold: float = compliance.DEFAULT_WER_THRESHOLD,
        retention_seconds: int = 7 * 24 * 3600,
        write_json: bool = True,
        recording_dir: Path = Path("var/recordings"),
        twilio_account_sid: str = "",
        twilio_auth_token: str = "",
        http: httpx.AsyncClient | None = None,
        download_timeout_s: float = 120.0,
        recording_hosts: tuple[str, ...] = ("twilio.com",),
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.engine = engine
        self.consumer = consumer or consumer_name()
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else claim_idle_ms / 3000
        self.max_attempts = max(1, max_attempts)
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.grace_s = grace_s
        self.wer_threshold = wer_threshold
        self.retention_seconds = retention_seconds
        self.write_json = write_json
        self.recording_dir = recording_dir
        self.twilio_auth = (twilio_account_sid, twilio_auth_token)
        self.http = http
        self.download_timeout_s = download_timeout_s
        self.recording_hosts = recording_hosts
        self.metrics = metrics or WorkerMetrics()
        self.in_hand: str | None = None
        self._group_ready = False
        self._claim_cursor = "0-0"

    # -- the loop ----------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self.redis.xgroup_create(self.keys.recordings, self.keys.recordings_group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set; the job in hand then gets ``grace_s`` to finish."""
        logger.info("batch worker %s consuming %s", self.consumer, self.keys.recordings)
        while not stop.is_set():
            job = asyncio.create_task(self.process_one())
            stopper = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({job, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not job.done():
                    # Stopping: nothing in hand -> stop reading now; else let the job finish for a while.
                    if self.in_hand is not None:
                        await asyncio.wait({job}, timeout=self.grace_s)
                    if not job.done():
                        job.cancel()
                try:
                    await job
                except asyncio.CancelledError:
                    if not stop.is_set():
                        raise
                except Exception:
                    logger.exception("batch worker loop error; retrying shortly")
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=min(5.0, max(0.1, self.block_ms / 1000)))
            except asyncio.CancelledError:
                job.cancel()
                with contextlib.suppress(BaseException):
                    await job
                raise
            finally:
                stopper.cancel()
        logger.info("batch worker %s stopped", self.consumer)

    async def process_one(self) -> bool:
        """Take one job (due retry, then a dead worker's job, then a new one) and handle it.

        Returns ``False`` when there was nothing to do within ``block_ms``.
        """
        await self.ensure_group()
        entry = await self._next()
        if entry is None:
            return False
        entry_id, fields = entry
        await self._handle(entry_id, fields)
        return True

    async def _next(self) -> tuple[str, dict[str, str]] | None:
        k = self.keys
        now = time.time()
        due = await self.redis.zrangebyscore(k.recordings_retry, "-inf", now, start=0, num=1)
        for raw_id in due:
            entry_id = _s(raw_id)
            if await self.redis.zrem(k.recordings_retry, entry_id):
                claimed: Any = await self.redis.xclaim(k.recordings, k.recordings_group, self.consumer, 0, [entry_id])
                for cid, fields in _entries(claimed):
                    if fields:
                        return cid, fields
                await self.redis.hdel(k.recordings_attempts, entry_id)  # the entry is gone (trimmed)
        result: Any = await self.redis.xautoclaim(
            k.recordings, k.recordings_group, self.consumer, self.claim_idle_ms, start_id=self._claim_cursor, count=1
        )
        self._claim_cursor = _s(result[0])
        for entry_id, fields in _entries(result[1]):
            score = await self.redis.zscore(k.recordings_retry, entry_id)
            if score is not None and float(score) > now:
                continue  # failed before and waiting out its backoff: not abandoned
            if fields:
                self.metrics.claimed.inc()
                logger.info("claimed job %s of a dead or stopped worker", entry_id)
                return entry_id, fields
        read: Any = await self.redis.xreadgroup(
            k.recordings_group, self.consumer, {k.recordings: ">"}, count=1, block=self.block_ms
        )
        for _stream, entries in read or []:
            for entry in _entries(entries):
                return entry
        return None

    # -- one job -----------------------------------------------------------------------------

    async def _handle(self, entry_id: str, fields: dict[str, str]) -> None:
        call_sid = fields.get("call_sid", "")
        try:
            job = RecordingJob.from_fields(fields)
        except (KeyError, ValueError, msgspec.ValidationError) as exc:
            # A malformed job can never succeed: straight to the dead letters.
            await self._dead_letter(entry_id, fields, f"bad job: {exc!r}", attempts=1)
            return
        self.in_hand = entry_id
        heartbeat = asyncio.create_task(self._heartbeat(entry_id))
        began = time.perf_counter()
        try:
            outcome = await self._process(entry_id, job)
            self.metrics.jobs.labels(outcome).inc()
            if outcome == "done":
                self.metrics.job_seconds.observe(time.perf_counter() - began)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(entry_id, call_sid))
            raise
        except Exception as exc:
            await self._failed(entry_id, fields, exc)
        finally:
            heartbeat.cancel()
            self.in_hand = None

    async def _process(self, entry_id: str, job: RecordingJob) -> str:
        sid = job.call_sid
        key = job_key(job)
        existing = await compliance.get_batch_transcript(self.redis, self.keys, sid)
        if existing is not None and existing.job_key == key:
            await self._ack(entry_id)
            logger.info("job %s already has a stored result; acked", entry_id, extra={"call_sid": sid})
            return "duplicate"
        path = await self._local_audio(job)
        recording = await asyncio.to_thread(read_recording, path)
        transcript = await transcribe_recording(
            self.engine, recording, call_sid=sid, tracks=job.tracks, path=str(path), job_key=key
        )
        if self.write_json:
            try:
                await asyncio.to_thread(write_json, transcript, batch_json_path(path))
            except OSError as exc:  # the Redis copy is the one that matters
                logger.warning("cannot write %s: %s", batch_json_path(path), exc, extra={"call_sid": sid})
        live = await compliance.live_finals(self.redis, self.keys, sid)
        quality = compliance.compute_quality(sid, live, transcript, threshold=self.wer_threshold)
        await compliance.store_result(
            self.redis, self.keys, transcript, quality, retention_seconds=self.retention_seconds, ack_entry=entry_id
        )
        self.metrics.audio_seconds.inc(recording.duration)
        if quality.wer is not None:
            self.metrics.live_wer.labels("all").observe(quality.wer)
            for t in quality.tracks:
                self.metrics.live_wer.labels(t.track).observe(t.wer)
        if quality.flagged:
            self.metrics.flagged.inc()
            logger.warning(
                "live transcript diverges from the batch one: WER %.2f > %.2f",
                quality.wer, self.wer_threshold, extra={"call_sid": sid},
            )  # fmt: skip
        logger.info(
            "batch transcript stored: %d utterances, %.1f s audio in %.1f s (%s %s)",
            len(transcript.utterances), transcript.duration, transcript.processing_seconds,
            transcript.engine, transcript.model, extra={"call_sid": sid},
        )  # fmt: skip
        return "done"

    async def _local_audio(self, job: RecordingJob) -> Path:
        if job.source != "twilio":
            return Path(job.path)
        if not job.recording_url:
            raise DownloadError("twilio job without recording_url")
        dest = Path(job.path) if job.path else self.recording_dir / f"{job.call_sid}.twilio.wav"
        if dest.exists() and dest.stat().st_size > 0:
            return dest  # fetched by an earlier attempt
        url = job.recording_url if job.recording_url.endswith(".wav") else job.recording_url + ".wav"
        host = (urlsplit(url).hostname or "").lower()
        if not any(host == h or host.endswith("." + h) for h in self.recording_hosts):
            raise DownloadError(f"refusing to send Twilio credentials to {host!r} (not in recording_hosts)")
        client = self.http or httpx.AsyncClient()
        try:
            resp = await client.get(url, auth=self.twilio_auth, follow_redirects=True, timeout=self.download_timeout_s)
        except httpx.HTTPError as exc:
            raise DownloadError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        finally:
            if self.http is None:
                await client.aclose()
        if resp.status_code != 200:
            raise DownloadError(f"GET {url}: HTTP {resp.status_code}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        await asyncio.to_thread(tmp.write_bytes, resp.content)
        os.replace(tmp, dest)
        return dest

    # -- bookkeeping -------------------------------------------------------------------------

    async def _heartbeat(self, entry_id: str) -> None:
        """Keep the entry's idle time low while we work on it, so nobody takes it over."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.redis.xclaim(
                    self.keys.recordings, self.keys.recordings_group, self.consumer, 0, [entry_id], justid=True
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.warning("heartbeat of job %s failed: %s", entry_id, exc)

    async def _ack(self, entry_id: str) -> None:
        k = self.keys
        async with self.redis.pipeline(transaction=True) as tx:
            tx.xack(k.recordings, k.recordings_group, entry_id)
            tx.hdel(k.recordings_attempts, entry_id)
            tx.zrem(k.recordings_retry, entry_id)
            await tx.execute()

    async def _release(self, entry_id: str, call_sid: str) -> None:
        """Give the job back: it stays pending but looks idle, so another worker claims it at once."""
        try:
            await self.redis.xclaim(
                self.keys.recordings, self.keys.recordings_group, self.consumer, 0, [entry_id],
                idle=self.claim_idle_ms, justid=True,
            )  # fmt: skip
            self.metrics.jobs.labels("released").inc()
            logger.info("job %s released", entry_id, extra={"call_sid": call_sid})
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("cannot release job %s (%s); it will be claimed after the idle timeout", entry_id, exc,
                           extra={"call_sid": call_sid})  # fmt: skip

    def backoff(self, attempts: int) -> float:
        """Delay before retry number ``attempts`` (1, 2, 4 … times the base, capped, ±20 % jitter)."""
        delay = min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempts - 1))
        return float(delay * random.uniform(0.8, 1.2))

    async def _failed(self, entry_id: str, fields: dict[str, str], exc: BaseException) -> None:
        call_sid = fields.get("call_sid", "")
        reason = f"{type(exc).__name__}: {exc}"
        known = isinstance(exc, ValueError | EngineError | DownloadError | OSError)
        try:
            attempts = int(await self.redis.hincrby(self.keys.recordings_attempts, entry_id, 1))
            if attempts >= self.max_attempts:
                await self._dead_letter(entry_id, fields, reason, attempts=attempts)
                return
            delay = self.backoff(attempts)
            await self.redis.zadd(self.keys.recordings_retry, {entry_id: time.time() + delay})
        except (redis.exceptions.RedisError, OSError) as rexc:
            logger.error("job %s failed (%s) and cannot be rescheduled (%s); it will be claimed again",
                         entry_id, reason, rexc, extra={"call_sid": call_sid})  # fmt: skip
            return
        self.metrics.jobs.labels("retry").inc()
        logger.warning(
            "job %s failed (attempt %d/%d), retry in %.0f s: %s",
            entry_id, attempts, self.max_attempts, delay, reason, extra={"call_sid": call_sid},
            exc_info=None if known else exc,
        )  # fmt: skip

    async def _dead_letter(self, entry_id: str, fields: dict[str, str], reason: str, *, attempts: int) -> None:
        k = self.keys
        doc = {**fields, "job_id": entry_id, "reason": reason[:2000], "attempts": str(attempts),
               "failed_at": repr(time.time()), "consumer": self.consumer}  # fmt: skip
        async with self.redis.pipeline(transaction=True) as tx:
            tx.xadd(k.recordings_dead, doc)  # type: ignore[arg-type]
            tx.xack(k.recordings, k.recordings_group, entry_id)
            tx.hdel(k.recordings_attempts, entry_id)
            tx.zrem(k.recordings_retry, entry_id)
            await tx.execute()
        self.metrics.jobs.labels("dead").inc()
        logger.error("job %s dead-lettered after %d attempt(s): %s", entry_id, attempts, reason,
                     extra={"call_sid": fields.get("call_sid", "")})  # fmt: skip


# -- entry point ----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bridge worker", description="Batch compliance worker (recording jobs).")
    ap.add_argument(
        "--engine",
        choices=("auto", "whisper", "deepgram", "elevenlabs"),
        default="auto",
        help="auto: the configured recognizer's batch API when it has a key, else embedded whisper",
    )
    ap.add_argument("--model", default="", help="whisper: base (default) or tiny.en; API engines: their model")
    ap.add_argument("--base-url", default="", help="API base URL (deepgram/elevenlabs)")
    ap.add_argument("--threads", type=int, default=0, help="whisper CPU threads (default: all cores)")
    ap.add_argument("--consumer", default="", help="consumer name (default host:pid)")
    ap.add_argument("--max-attempts", type=int, default=5)
    ap.add_argument("--claim-idle", type=float, default=120.0, help="seconds before a silent worker's job is taken")
    ap.add_argument("--backoff", type=float, default=10.0, help="first retry delay, seconds (doubles each time)")
    ap.add_argument("--grace", type=float, default=30.0, help="seconds the job in hand gets after SIGTERM")
    ap.add_argument("--wer-threshold", type=float, default=compliance.DEFAULT_WER_THRESHOLD)
    ap.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port")
    ap.add_argument("--no-json", action="store_true", help="do not write .batch.json beside recordings")
    return ap  # fmt: skip


async def _amain(args: argparse.Namespace) -> int:
    from bridge.settings import Settings
    from bridge.store import Store

    settings = Settings.from_env()
    kind = args.engine
    if kind == "auto":
        kind = settings.recognizer if settings.recognizer != "embedded" and settings.recognizer_api_key else "whisper"
    engine = await asyncio.to_thread(
        make_engine, kind, model=args.model, api_key=settings.recognizer_api_key,
        base_url=args.base_url, cpu_threads=args.threads,
    )  # fmt: skip
    metrics = WorkerMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr="127.0.0.1", registry=metrics.registry)
    store = await Store.open(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with httpx.AsyncClient() as http:
            worker = Worker(
                store.client, store.keys, engine,
                consumer=args.consumer or None,
                claim_idle_ms=int(args.claim_idle * 1000),
                max_attempts=args.max_attempts,
                backoff_base_s=args.backoff,
                grace_s=args.grace,
                wer_threshold=args.wer_threshold,
                retention_seconds=settings.retention_seconds,
                write_json=not args.no_json,
                recording_dir=settings.recording_dir,
                twilio_account_sid=settings.twilio_account_sid,
                twilio_auth_token=settings.twilio_auth_token,
                http=http,
                metrics=metrics,
            )  # fmt: skip
            await worker.run(stop)
    finally:
        await store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``bridge worker [options]``: run until SIGTERM/SIGINT."""
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_amain(args))
    except Exception as exc:
        logger.error("batch worker cannot start: %s", exc)
        print(f"bridge worker: {exc}", file=sys.stderr)
        return 1


__all__ = ["DownloadError", "Worker", "WorkerMetrics", "consumer_name", "job_key", "main"]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
