"""Prometheus metrics of one recognizer app (a private registry, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bridge.embedded.scheduler import DecodeScheduler


class RecognizerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.streams = Gauge("recognizer_active_streams", "Open /v1/listen connections", registry=r)
        self.streams_total = Counter("recognizer_streams", "Accepted /v1/listen connections", registry=r)
        self.rejected = Counter(
            "recognizer_rejected_upgrades", "Upgrades refused", ["status"], registry=r
        )
        self.audio_seconds = Counter("recognizer_audio_seconds", "Audio received (s)", registry=r)
        self.decode_seconds = Histogram(
            "recognizer_decode_seconds",
            "Time a decode spent on a worker",
            ["kind"],
            buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0),
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "recognizer_queue_wait_seconds",
            "Time a decode waited for a worker",
            ["kind"],
            buckets=(0.0, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.queue_depth = Gauge("recognizer_queue_depth", "Queued decodes", ["kind"], registry=r)
        self.busy = Gauge("recognizer_busy_workers", "Workers decoding now", registry=r)
        self.workers = Gauge("recognizer_workers", "Decoder threads", registry=r)
        self.skipped = Gauge(
            "recognizer_skipped_partials", "Partials dropped because they waited too long", registry=r
        )
        self.replaced = Gauge(
            "recognizer_coalesced_partials", "Partials replaced by a newer request", registry=r
        )
        self.packed_finals = Gauge(
            "recognizer_packed_finals", "Finals that shared one decode with others queued with them", registry=r
        )
        self.ahead = Gauge(
            "recognizer_finals_decoded_ahead", "Finals decoded at the first pause, before the endpoint",
            ["outcome"], registry=r,
        )
        self.cheap_finals = Gauge(
            "recognizer_cheap_finals", "Finals decoded with the fast model because finals were queuing up", registry=r
        )
        self.context_finals = Gauge(
            "recognizer_context_finals", "Short finals decoded after the speaker's earlier audio", registry=r
        )

    def observe_decode(self, kind: str, waited: float, ran: float) -> None:
        self.queue_wait_seconds.labels(kind).observe(waited)
        self.decode_seconds.labels(kind).observe(ran)

    def refresh(self, scheduler: DecodeScheduler) -> None:
        s = scheduler.stats()
        self.queue_depth.labels("final").set(s.queued_finals)
        self.queue_depth.labels("partial").set(s.queued_partials)
        self.busy.set(s.busy)
        self.workers.set(s.workers)
        self.skipped.set(s.skipped_partials)
        self.replaced.set(s.replaced_partials)
        self.cheap_finals.set(s.cheap_finals)
        self.context_finals.set(s.context_finals)
        self.packed_finals.set(s.packed_finals)
        self.ahead.labels("used").set(s.used_ahead)
        self.ahead.labels("wasted").set(s.wasted_ahead)
