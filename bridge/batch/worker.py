"""``bridge worker``: consumes recording jobs and stores each call's compliance transcript.

The queue's delivery guarantees (consumer group, claims, retries, dead letters) are
:class:`bridge.store.JobQueue`'s; this module orchestrates one job at a time:

* results are one key per call, tagged with the recording's identity, so a job seen twice (a
  redelivery after a crash between store and ack) stores one result and is not transcribed again;
* the job is acked only after its result is stored (a redelivery in between finds the result and only acks);
* a failed job is retried after a backoff (:mod:`bridge.retry`) and dead-lettered after
  ``max_attempts``; a malformed job is dead-lettered at once;
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
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import msgspec
import redis.exceptions
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.audio import WavError, read_wav
from bridge.batch.engine import make_engine, transcribe_recording
from bridge.batch.quality import DEFAULT_WER_THRESHOLD, compute_quality
from bridge.compliance.report import ComplianceMetrics, announce_failure, file_report
from bridge.compliance.rules import RuleSet, default_rules
from bridge.redact.batch import redact_recording
from bridge.retry import Backoff
from bridge.store import Backlog, JobQueue, RecordingJob, Store
from bridge.transcripts import BatchEngine, BatchTranscript, CallQuality, EngineError, json_path, write_json
from bridge.twilio.recordings import DownloadError, download_recording
from bridge.webhooks import BatchCompletedData, WebhookOutbox, new_event_id

logger = logging.getLogger(__name__)

_WER_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0)
_JOB_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)
_REDIS_ERRORS = (redis.exceptions.RedisError, OSError)


class WorkerMetrics:
    """Prometheus metrics of the batch worker (on an injectable registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.jobs = Counter(
            "bridge_batch_jobs_total",
            "Recording jobs handled, by outcome (done, duplicate, erased, retry, dead, released)",
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
        # The queue as a whole (every worker reports the same figures: aggregate with max()).
        self.backlog_jobs = Gauge(
            "bridge_batch_backlog_jobs",
            "Recording jobs not done: queued (never read) or pending (in hand, or failed and waiting to retry)",
            ["state"],
            registry=r,
        )
        self.backlog_oldest = Gauge(
            "bridge_batch_backlog_oldest_seconds", "Age of the oldest recording job not done yet", registry=r
        )
        self.dead_letters = Gauge("bridge_batch_dead_letters", "Recording jobs in the dead letters", registry=r)

    def set_backlog(self, backlog: Backlog) -> None:
        self.backlog_jobs.labels("queued").set(backlog.queued)
        self.backlog_jobs.labels("pending").set(backlog.pending)
        self.backlog_oldest.set(backlog.oldest_seconds)
        self.dead_letters.set(backlog.dead)


def consumer_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_key(job: RecordingJob) -> str:
    """Identity of the recording a job is about (a result stored for it makes the job a duplicate).

    A bridge recording grows when its call comes back under the same CallSid (the file is appended
    to), so its identity includes the length the job was queued with.
    """
    if job.source == "stream":
        return f"stream:{job.path}@{job.duration!r}"
    return f"{job.source}:{job.recording_url or job.path}"


class Worker:
    """One consumer of the recording jobs stream."""

    def __init__(
        self,
        store: Store,
        engine: BatchEngine,
        *,
        consumer: str | None = None,
        block_ms: int = 2000,
        claim_idle_ms: int = 120_000,
        heartbeat_s: float | None = None,
        max_attempts: int = 5,
        backoff: Backoff = Backoff(base=10.0, cap=900.0),
        grace_s: float = 30.0,
        wer_threshold: float = DEFAULT_WER_THRESHOLD,
        write_json: bool = True,
        recording_dir: Path = Path("var/recordings"),
        twilio_account_sid: str = "",
        twilio_auth_token: str = "",
        http: httpx.AsyncClient | None = None,
        download_timeout_s: float = 120.0,
        recording_hosts: tuple[str, ...] = ("twilio.com",),
        metrics: WorkerMetrics | None = None,
        backlog_interval_s: float = 15.0,
        redact: tuple[str, ...] = ("card",),
        keep_unredacted: bool = False,
        rules: RuleSet | None = None,
        webhook_urls: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.outbox = WebhookOutbox(store, webhook_urls)
        self.queue: JobQueue = store.jobs
        self.engine = engine
        self.consumer = consumer or consumer_name()
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.heartbeat_s = max(0.05, heartbeat_s if heartbeat_s is not None else claim_idle_ms / 3000)
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.grace_s = grace_s
        self.wer_threshold = wer_threshold
        self.write_json = write_json
        self.recording_dir = recording_dir
        self.twilio_auth = (twilio_account_sid, twilio_auth_token)
        self.http = http
        self.download_timeout_s = download_timeout_s
        self.recording_hosts = recording_hosts
        self.metrics = metrics or WorkerMetrics()
        #: Seconds between two measurements of the queue's backlog (about Prometheus's scrape interval).
        self.backlog_interval_s = backlog_interval_s
        self.in_hand: str | None = None
        #: Entity kinds masked in the transcript and silenced in the recording (``BRIDGE_REDACT``).
        self.redact = frozenset(redact)
        self.keep_unredacted = keep_unredacted
        #: The compliance rules every batch transcript is judged by (the report is filed before the ack).
        self.rules = rules or default_rules()
        self.compliance = ComplianceMetrics(self.metrics.registry)

    # -- the loop ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Process jobs until ``stop`` is set; the job in hand then gets ``grace_s`` to finish."""
        logger.info("batch worker %s consuming %s", self.consumer, self.store.keys.recordings)
        watcher = asyncio.create_task(self._watch_backlog(stop), name="backlog")
        try:
            await self._consume(stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        logger.info("batch worker %s stopped", self.consumer)

    async def refresh_backlog(self) -> Backlog | None:
        """Measure the queue and set the gauges; ``None`` (gauges kept) when Redis does not answer."""
        try:
            backlog = await self.queue.backlog()
        except _REDIS_ERRORS as exc:
            logger.warning("cannot measure the job backlog: %s", exc)
            return None
        self.metrics.set_backlog(backlog)
        return backlog

    async def _watch_backlog(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.refresh_backlog()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.backlog_interval_s)

    async def _consume(self, stop: asyncio.Event) -> None:
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

    async def process_one(self) -> bool:
        """Take one job (due retry, then a dead worker's job, then a new one) and handle it.

        Returns ``False`` when there was nothing to do within ``block_ms``.
        """
        got = await self.queue.next(self.consumer, block_ms=self.block_ms, claim_idle_ms=self.claim_idle_ms)
        if got is None:
            return False
        (entry_id, fields), claimed = got
        if claimed:
            self.metrics.claimed.inc()
            logger.info("claimed job %s of a dead or stopped worker", entry_id)
        await self._handle(entry_id, fields)
        return True

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
        done = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(entry_id, done))
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
            done.set()  # also ends a heartbeat whose cancellation a Redis call swallowed
            heartbeat.cancel()
            self.in_hand = None

    async def _process(self, entry_id: str, job: RecordingJob) -> str:
        sid = job.call_sid
        key = job_key(job)
        if await self.store.call_deleted(sid):
            await self.queue.discard(entry_id)
            logger.info("job %s is of an erased call; acked without running", entry_id, extra={"call_sid": sid})
            return "erased"
        existing = await self.store.batch_transcript(sid)
        if existing is not None and existing.job_key == key:
            report = await self.store.compliance(sid)
            if report is None or report.job_key != key:  # stopped between the transcript and its report
                await file_report(self.store, existing, self.rules, self.compliance, self.outbox)
            elif not report.passed:  # its webhook may not have been queued (the same event id again)
                await announce_failure(self.outbox, report)
            if (quality := await self.store.quality(sid)) is not None:  # its webhook may not have been queued
                await self._announce(existing, quality)
            await self.queue.ack(entry_id)
            logger.info("job %s already has a stored result; acked", entry_id, extra={"call_sid": sid})
            return "duplicate"
        path = await self._local_audio(job)
        recording = await asyncio.to_thread(read_wav, path)
        if recording.channels not in (1, 2):
            raise WavError(f"{path}: {recording.channels} channels (1 or 2 supported)")
        if job.source == "twilio" and recording.channels < job.channels:
            # A downmix would put the agent on the caller's track and drop the agent's transcript.
            path.unlink(missing_ok=True)
            raise DownloadError(f"Twilio served {recording.channels} channel(s) of a {job.channels}-channel recording")
        transcript = await transcribe_recording(
            self.engine, recording, call_sid=sid, tracks=job.tracks, path=str(path), job_key=key
        )
        transcript = await redact_recording(
            self.store, transcript, path, transcript.tracks, kinds=self.redact, keep_original=self.keep_unredacted
        )
        if self.write_json:
            try:
                await asyncio.to_thread(write_json, transcript, json_path(path))
            except OSError as exc:  # the Redis copy is the one that matters
                logger.warning("cannot write %s: %s", json_path(path), exc, extra={"call_sid": sid})
        live = await self.store.transcript(sid)
        quality = compute_quality(sid, live, transcript, threshold=self.wer_threshold)
        if await self.store.save_batch_result(transcript, quality):
            await file_report(self.store, transcript, self.rules, self.compliance, self.outbox)
            await self._announce(transcript, quality)
        await self.queue.ack(entry_id)
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

    async def _announce(self, transcript: BatchTranscript, quality: CallQuality) -> None:
        """Queue ``batch.completed`` (before the ack; the same event id however often it is raised)."""
        data = BatchCompletedData(engine=transcript.engine, model=transcript.model, duration=transcript.duration,
                                  utterances=len(transcript.utterances), wer=quality.wer, flagged=quality.flagged)
        event_id = new_event_id(f"batch:{transcript.call_sid}:{transcript.job_key}")
        await self.outbox.enqueue("batch.completed", transcript.call_sid, data, event_id=event_id)

    async def _local_audio(self, job: RecordingJob) -> Path:
        if job.source != "twilio":
            return Path(job.path)
        if not job.recording_url:
            raise DownloadError("twilio job without recording_url")
        dest = Path(job.path) if job.path else self.recording_dir / f"{job.call_sid}.twilio.wav"
        if dest.exists() and dest.stat().st_size > 0:
            return dest  # fetched by an earlier attempt
        return await download_recording(
            job.recording_url, dest, auth=self.twilio_auth, http=self.http, allowed_hosts=self.recording_hosts,
            timeout=self.download_timeout_s, channels=job.channels,
        )  # fmt: skip

    # -- bookkeeping -------------------------------------------------------------------------

    async def _heartbeat(self, entry_id: str, done: asyncio.Event) -> None:
        """Keep the entry's idle time low while we work on it, so nobody takes it over."""
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.heartbeat_s)
            if done.is_set():
                return
            try:
                await self.queue.heartbeat(entry_id, self.consumer)
            except _REDIS_ERRORS as exc:
                logger.warning("heartbeat of job %s failed: %s", entry_id, exc)

    async def _release(self, entry_id: str, call_sid: str) -> None:
        try:
            await self.queue.release(entry_id, self.consumer, idle_ms=self.claim_idle_ms)
            self.metrics.jobs.labels("released").inc()
            logger.info("job %s released", entry_id, extra={"call_sid": call_sid})
        except _REDIS_ERRORS as exc:
            logger.warning("cannot release job %s (%s); it will be claimed after the idle timeout", entry_id, exc,
                           extra={"call_sid": call_sid})  # fmt: skip

    async def _failed(self, entry_id: str, fields: dict[str, str], exc: BaseException) -> None:
        call_sid = fields.get("call_sid", "")
        reason = f"{type(exc).__name__}: {exc}"
        known = isinstance(exc, ValueError | EngineError | DownloadError | OSError)
        try:
            attempts = await self.queue.failed(entry_id)
            if attempts >= self.max_attempts:
                await self._dead_letter(entry_id, fields, reason, attempts=attempts)
                return
            delay = self.backoff.delay(attempts - 1)
            await self.queue.retry_at(entry_id, time.time() + delay)
        except _REDIS_ERRORS as rexc:
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
        await self.queue.dead_letter(entry_id, fields, reason, attempts=attempts, consumer=self.consumer)
        self.metrics.jobs.labels("dead").inc()
        logger.error("job %s dead-lettered after %d attempt(s): %s", entry_id, attempts, reason,
                     extra={"call_sid": fields.get("call_sid", "")})  # fmt: skip


# -- entry point ----------------------------------------------------------------------------------


async def _amain(args: argparse.Namespace) -> int:
    from bridge.retention.files import sweeping
    from bridge.settings import Settings
    from bridge.webhooks.sender import sending

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

        start_http_server(args.metrics_port, addr=args.metrics_host, registry=metrics.registry)
    store = await Store.open(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with httpx.AsyncClient() as http:
            worker = Worker(
                store, engine,
                consumer=args.consumer or None,
                claim_idle_ms=int(args.claim_idle * 1000),
                max_attempts=args.max_attempts,
                backoff=Backoff(base=args.backoff, cap=900.0),
                grace_s=args.grace,
                wer_threshold=DEFAULT_WER_THRESHOLD if args.wer_threshold is None else args.wer_threshold,
                write_json=not args.no_json,
                recording_dir=settings.recording_dir,
                twilio_account_sid=settings.twilio_account_sid,
                twilio_auth_token=settings.twilio_auth_token,
                recording_hosts=settings.recording_hosts,
                http=http,
                metrics=metrics,
                redact=settings.redact,
                keep_unredacted=settings.keep_unredacted,
                rules=settings.compliance_rules,
                webhook_urls=settings.webhook_urls,
            )  # fmt: skip
            async with sweeping(store, settings), sending(store, settings, metrics.registry):
                await worker.run(stop)
    finally:
        await store.close()
    return 0


def main(args: argparse.Namespace) -> int:
    """``bridge worker [options]``: run until SIGTERM/SIGINT."""
    try:
        return asyncio.run(_amain(args))
    except Exception as exc:
        logger.error("batch worker cannot start: %s", exc)
        print(f"bridge worker: {exc}", file=sys.stderr)
        return 1


__all__ = ["Worker", "WorkerMetrics", "consumer_name", "job_key", "main"]
