"""The compliance report of one call, from its batch transcript (the "after the fact" one: the whole
recording, both tracks, word times) rather than the live finals, which may have gaps."""

from __future__ import annotations

import time

from bridge.compliance.matcher import RuleMatcher, Token, tokens
from bridge.compliance.models import ComplianceReport, Evidence, RuleResult
from bridge.compliance.rules import RuleSet
from bridge.events import Alert
from bridge.transcripts import BatchTranscript, Redaction, Utterance, in_order

#: At most this many pieces of evidence per rule (a forbidden word said fifty times needs five).
MAX_EVIDENCE = 10


def _evidence(u: Utterance, words: list[Token], first: int, last: int) -> Evidence:
    return Evidence(track=u.track, start=words[first].start, end=words[last].end, text=u.text)


def evaluate_rule(matcher: RuleMatcher, turns: list[tuple[Utterance, list[Token]]]) -> RuleResult:
    rule = matcher.rule
    window = rule.within_seconds
    found: list[Evidence] = []
    for u, words in turns:
        if not rule.applies_to(u.track):
            continue
        for m in matcher.matches(words):
            if window is not None and words[m.first].start >= window:
                continue
            found.append(_evidence(u, words, m.first, m.last))
    if rule.kind == "required":
        passed = bool(found)
        if passed:
            evidence = found[:1]
        else:  # what the track said in the window instead: the analyst's starting point
            evidence = [
                Evidence(track=u.track, start=u.start, end=u.end, text=u.text)
                for u, _ in turns
                if rule.applies_to(u.track) and u.text and (window is None or u.start < window)
            ]
    else:
        passed = rule.kind == "alert" or not found
        evidence = found
    return RuleResult(id=rule.id, kind=rule.kind, passed=passed, evidence=evidence[:MAX_EVIDENCE],
                      description=rule.description)  # fmt: skip


def evaluate(
    transcript: BatchTranscript,
    rules: RuleSet,
    *,
    alerts: list[Alert] | None = None,
    redactions: list[Redaction] | None = None,
    matchers: list[RuleMatcher] | None = None,
) -> ComplianceReport:
    """Judge every rule on the transcript; the call passes when no required or forbidden rule failed."""
    turns = [(u, tokens(u.text, u.words, u.start, u.end)) for u in in_order(transcript.utterances)]
    results = [evaluate_rule(m, turns) for m in matchers or [RuleMatcher(r, rules) for r in rules.rules]]
    return ComplianceReport(
        call_sid=transcript.call_sid,
        passed=all(r.passed for r in results),
        rules=results,
        alerts=list(alerts or []),
        redactions=list(redactions or []),
        evaluated_at=time.time(),
        job_key=transcript.job_key,
        engine=f"{transcript.engine} {transcript.model}".strip(),
    )


__all__ = ["MAX_EVIDENCE", "evaluate", "evaluate_rule"]
