"""Filing a call's compliance report after the batch pass: evaluate, store, count, log.

The batch worker calls :func:`file_report` once the batch transcript is stored and before it acks the
job, so a worker that dies in between leaves the job to be redone, never a call without a report.
"""

from __future__ import annotations

import logging
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter

from bridge import events
from bridge.compliance.evaluate import evaluate
from bridge.compliance.models import ComplianceReport
from bridge.compliance.rules import RuleSet
from bridge.transcripts import BatchTranscript, Redaction
from bridge.webhooks import WebhookOutbox, new_event_id

log = logging.getLogger(__name__)


class ReportStore(Protocol):
    """What filing a report needs of the store (:class:`bridge.store.Store` is one)."""

    async def alerts(self, call_sid: str) -> list[events.Alert]: ...
    async def redactions(self, call_sid: str) -> list[Redaction] | None: ...
    async def save_compliance(self, report: ComplianceReport) -> bool: ...


class ComplianceMetrics:
    """``bridge_compliance_rule_results_total{rule,result}`` and ``bridge_compliance_reports_total{result}``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.rule_results = Counter(
            "bridge_compliance_rule_results_total", "Compliance rule results of batch reports, by rule and result",
            ["rule", "result"], registry=r,
        )  # fmt: skip
        self.reports = Counter(
            "bridge_compliance_reports_total", "Compliance reports filed, by result", ["result"], registry=r
        )

    def count(self, report: ComplianceReport) -> None:
        for rule in report.rules:
            if rule.kind == "alert":
                self.rule_results.labels(rule.id, "matched" if rule.evidence else "none").inc()
            else:
                self.rule_results.labels(rule.id, "pass" if rule.passed else "fail").inc()
        self.reports.labels("pass" if report.passed else "fail").inc()


async def file_report(
    store: ReportStore, transcript: BatchTranscript, rules: RuleSet, metrics: ComplianceMetrics | None = None,
    outbox: WebhookOutbox | None = None,
) -> ComplianceReport:
    """Evaluate the rules on the batch transcript and store the report with the call's alerts and
    redactions (``[]`` when the batch pass stored none); a failing one is raised as ``compliance.failed``
    (nothing is stored nor raised for an erased call)."""
    sid = transcript.call_sid
    alerts = await store.alerts(sid)
    redactions = await store.redactions(sid) or []
    report = evaluate(transcript, rules, alerts=alerts, redactions=redactions)
    if not await store.save_compliance(report):
        return report
    if metrics is not None:
        metrics.count(report)
    if report.passed:
        log.info("compliance report: passed (%d rules)", len(report.rules), extra={"call_sid": sid})
    else:
        compliance_failed(report)
        if outbox is not None:
            await announce_failure(outbox, report)
    return report


def compliance_failed(report: ComplianceReport) -> None:
    """THE place a failing report is known (stored just before). Called once per report filed (a job
    redone files, and calls this, again)."""
    failed = ", ".join(r.id for r in report.failed_rules)
    log.warning("compliance report: FAILED %s", failed, extra={"call_sid": report.call_sid})


async def announce_failure(outbox: WebhookOutbox, report: ComplianceReport) -> None:
    """The ``compliance.failed`` webhook, with one event id per report (however often it is raised)."""
    event_id = new_event_id(f"compliance:{report.call_sid}:{report.job_key}")
    await outbox.enqueue("compliance.failed", report.call_sid, report, event_id=event_id)


__all__ = ["ComplianceMetrics", "ReportStore", "announce_failure", "compliance_failed", "file_report"]
