"""Alert rules on live finals: one alert per matching rule, only on the rule's track, the final's text
and times; any text at all is matched without raising (the call path must never stop on it)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import events
from bridge.compliance.alerts import LiveAlerts, live_alerts
from bridge.compliance.matcher import tokens
from bridge.compliance.rules import default_rules, parse

SID = "CA" + "a7" * 16


def final(text: str, track: events.Track = "inbound", start: float = 3.0) -> events.Final:
    return events.Final(call_sid=SID, id=events.final_id(track, start), track=track, start=start, end=start + 2,
                        text=text)  # fmt: skip


def test_one_alert_per_matching_rule_with_the_finals_text_and_times() -> None:
    f = final("I'll cancel and call my lawyer, get me a supervisr!")
    alerts = live_alerts(default_rules()).match(f)
    assert [a.rule for a in alerts] == ["cancellation", "supervisor", "lawyer"]
    assert all((a.call_sid, a.track, a.text, a.start, a.end, a.final_id) == (SID, "inbound", f.text, 3.0, 5.0, f.id)
               for a in alerts)  # fmt: skip
    assert live_alerts(default_rules()).match(final("Thanks, that is all.")) == []
    assert live_alerts(default_rules()).match(final("   ")) == []


def test_an_alert_rule_watches_only_its_track() -> None:
    rules = parse(b'[[rules]]\nid = "agent_refund"\nkind = "alert"\ntrack = "outbound"\nphrases = ["refund*"]\n')
    alerts = LiveAlerts(rules)
    assert alerts.match(final("a refund please", "inbound")) == []
    assert [a.rule for a in alerts.match(final("I will refund it", "outbound"))] == ["agent_refund"]


def test_required_and_forbidden_rules_do_not_alert() -> None:
    assert live_alerts(default_rules()).match(final("I guarantee this call may be recorded", "outbound")) == []


def test_the_compiled_rules_are_shared_by_every_call() -> None:
    assert live_alerts(default_rules()) is live_alerts(default_rules())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_normalised_and_matched_without_raising(text: str) -> None:
    words = tokens(text, (), 0.0, 1.0)  # not through LiveAlerts.match, whose guard would hide an error
    for matcher in live_alerts(default_rules()).matchers:
        for m in matcher.matches(words):
            assert 0 <= m.first <= m.last < len(words)
