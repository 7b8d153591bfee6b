"""The compliance report: what the batch pass found for each rule, stored at ``Keys.compliance(sid)``.

Plain documents (msgspec structs), read by the store, the REST API and ``bridge compliance``.
"""

from __future__ import annotations

import msgspec

from bridge.events import Alert
from bridge.transcripts import Redaction


class Evidence(msgspec.Struct, kw_only=True):
    """Where a rule matched (or, for a required phrase never said, what was said instead)."""

    track: str
    start: float
    end: float
    text: str


class RuleResult(msgspec.Struct, kw_only=True):
    id: str
    kind: str
    passed: bool
    evidence: list[Evidence] = msgspec.field(default_factory=list)
    description: str = ""


class ComplianceReport(msgspec.Struct, kw_only=True):
    """A call's report: ``passed`` when every required and forbidden rule passed (alerts never fail a call)."""

    call_sid: str
    passed: bool
    rules: list[RuleResult]
    #: Alerts raised on the live finals of the call.
    alerts: list[Alert] = msgspec.field(default_factory=list)
    #: Spans masked by the batch pass (empty when it masked none, or did not run redaction).
    redactions: list[Redaction] = msgspec.field(default_factory=list)
    evaluated_at: float = 0.0
    #: Which batch transcript was judged (its job key) and by which engine.
    job_key: str = ""
    engine: str = ""

    @property
    def failed_rules(self) -> list[RuleResult]:
        return [r for r in self.rules if not r.passed]


class FailedCall(msgspec.Struct, kw_only=True):
    """One row of ``GET /compliance?failed=true``: the call and the rules it failed, with evidence."""

    call_sid: str
    passed: bool
    evaluated_at: float
    rules: list[RuleResult]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ComplianceReport)


def encode(report: ComplianceReport) -> bytes:
    return _encoder.encode(report)


def decode(data: bytes | str) -> ComplianceReport:
    """Raises ``msgspec.DecodeError``/``ValidationError`` on a bad document."""
    return _decoder.decode(data)


__all__ = ["ComplianceReport", "Evidence", "FailedCall", "RuleResult", "decode", "encode"]
