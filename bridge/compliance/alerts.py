"""Live alerts: the alert rules run on each live final, and a match becomes an ``alert`` event.

Matching is on the final's (already redacted) text, on the call path, so it must stay cheap: the text
is normalised once and only alert rules are tried. Raising the alert (store once, publish to
subscribers) goes through the write-behind like the final itself, right after it, so subscribers get
it within the final's own latency, and the alert carries the final's ``seq``.
"""

from __future__ import annotations

import logging
from typing import Protocol

from bridge import events
from bridge.compliance.matcher import RuleMatcher, tokens
from bridge.compliance.rules import RuleSet
from bridge.webhooks import WebhookOutbox, new_event_id

log = logging.getLogger(__name__)


class AlertSink(Protocol):
    """What raising an alert needs of the store (:meth:`bridge.store.Store.add_alert`)."""

    async def add_alert(self, alert: events.Alert) -> bool: ...


class LiveAlerts:
    """The alert rules of a rule set, compiled once, matched against live finals."""

    def __init__(self, rules: RuleSet) -> None:
        self.matchers = [RuleMatcher(r, rules) for r in rules.of_kind("alert")]

    def match(self, final: events.Final) -> list[events.Alert]:
        """One alert per alert rule that matches the final (none for an empty final)."""
        matchers = [m for m in self.matchers if m.rule.applies_to(final.track)]
        if not matchers or not final.text.strip():
            return []
        try:
            words = tokens(final.text, (), final.start, final.end)
        except Exception:  # a normaliser bug must never stop the call's transcript
            log.exception("alert matching failed on a final", extra={"call_sid": final.call_sid})
            return []
        f = final
        return [
            events.Alert(call_sid=f.call_sid, rule=m.rule.id, track=f.track, text=f.text, start=f.start, end=f.end,
                         final_id=f.id)
            for m in matchers
            if m.first(words) is not None
        ]


_compiled: dict[int, tuple[RuleSet, LiveAlerts]] = {}


def live_alerts(rules: RuleSet) -> LiveAlerts:
    """The compiled alert rules of a rule set (compiled once per rule set, not per call)."""
    hit = _compiled.get(id(rules))
    if hit is None or hit[0] is not rules:
        hit = _compiled[id(rules)] = (rules, LiveAlerts(rules))
    return hit[1]


async def raise_alert(store: AlertSink, alert: events.Alert, outbox: WebhookOutbox | None = None) -> bool:
    """THE place a live alert is raised: stored and published once per rule and final, and queued as
    the ``alert`` webhook (one event id per rule and final).

    Returns ``False`` for a repeat (a retried write, or an erased call). The webhook is queued for a
    repeat too: the write may be retried because queuing it failed (receivers see one event); the
    sender drops the deliveries of an erased call.
    """
    raised = await store.add_alert(alert)
    if outbox is not None:
        event_id = new_event_id(f"alert:{alert.call_sid}:{alert.final_id}|{alert.rule}")
        await outbox.enqueue("alert", alert.call_sid, alert, event_id=event_id)
    if raised:
        log.info("alert %s on %s at %.1f s", alert.rule, alert.track, alert.start, extra={"call_sid": alert.call_sid})
    return raised


__all__ = ["AlertSink", "LiveAlerts", "live_alerts", "raise_alert"]
