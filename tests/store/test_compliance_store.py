"""Alerts and compliance reports in Redis: an alert stored and published once per rule and final, with
its final's seq; reports with the call's retention, indexed (all, failed) newest first."""

from __future__ import annotations

import asyncio
import time

from bridge import events
from bridge.compliance.models import ComplianceReport, Evidence, RuleResult
from bridge.store import Store

CALL = "CA" + "a1" * 16


def final(start: float, text: str) -> events.Final:
    return events.Final(call_sid=CALL, id=events.final_id("inbound", start), track="inbound", start=start,
                        end=start + 1.0, text=text)  # fmt: skip


def alert_of(f: events.Final, rule: str) -> events.Alert:
    return events.Alert(call_sid=f.call_sid, rule=rule, track=f.track, text=f.text, start=f.start, end=f.end,
                        final_id=f.id)  # fmt: skip


def report(sid: str, passed: bool, at: float) -> ComplianceReport:
    evidence = [Evidence(track="outbound", start=0.5, end=3.0, text="Hello.")]
    rules = [RuleResult(id="recording_disclosure", kind="required", passed=passed, evidence=evidence)]
    return ComplianceReport(call_sid=sid, passed=passed, rules=rules, evaluated_at=at)


async def test_an_alert_is_stored_and_published_once_with_its_finals_seq(store: Store) -> None:
    await store.call_started(CALL, stream_sid="MZ1", tracks=["inbound"], started_at=1.0)
    first, second = final(0.0, "hello"), final(2.0, "get me a supervisor or I cancel")
    await store.add_final(first)
    assert await store.add_final(second) == 2
    async with store.subscribe(CALL) as live:
        assert await store.add_alert(alert_of(second, "supervisor")) is True
        assert await store.add_alert(alert_of(second, "supervisor")) is False  # a retried write
        assert await store.add_alert(alert_of(second, "cancellation")) is True
        got = []
        async with asyncio.timeout(5):
            async for event in live:  # on a cluster, the finals' own messages may still be arriving
                if isinstance(event, events.Alert):
                    got.append(event)
                if len(got) == 2:
                    break
    assert [(type(e).__name__, e.seq, getattr(e, "rule", "")) for e in got] == [
        ("Alert", 2, "supervisor"), ("Alert", 2, "cancellation")]  # fmt: skip
    stored = await store.alerts(CALL)
    assert {a.rule for a in stored} == {"supervisor", "cancellation"} and {a.seq for a in stored} == {2}
    assert all(a.final_id == second.id and a.text == second.text for a in stored)


async def test_alerts_share_the_calls_retention(store: Store) -> None:
    await store.call_started(CALL, stream_sid="MZ1", tracks=["inbound"], started_at=1.0)
    f = final(0.0, "lawyer")
    await store.add_final(f)
    await store.add_alert(alert_of(f, "lawyer"))
    key = store.keys.alerts(CALL)
    assert key in store.keys.call_keys(CALL)
    assert await store.client.ttl(key) == -1  # a live call keeps its data
    await store.call_ended(CALL, ended_at=10.0)
    assert 0 < await store.client.ttl(key) <= 3600
    later = final(5.0, "my lawyer again")  # a final written after the end (write-behind flush)
    await store.add_final(later)
    await store.add_alert(alert_of(later, "lawyer"))
    assert 0 < await store.client.ttl(key) <= 3600


async def test_reports_are_indexed_newest_first_and_failing_ones_apart(store: Store) -> None:
    sids = ["CA" + f"{i:02x}" * 16 for i in range(1, 4)]
    now = time.time()
    await store.save_compliance(report(sids[0], False, now))
    await store.save_compliance(report(sids[1], True, now + 1))
    await store.save_compliance(report(sids[2], False, now + 2))
    assert await store.compliance_calls() == [sids[2], sids[1], sids[0]]
    assert await store.compliance_calls(failed=True) == [sids[2], sids[0]]
    stored = await store.compliance(sids[0])
    assert stored == report(sids[0], False, now)
    assert 0 < await store.client.ttl(store.keys.compliance(sids[0])) <= 3600
    # A redone pass that now passes takes the call off the failed index.
    await store.save_compliance(report(sids[0], True, now + 3))
    assert await store.compliance_calls(failed=True) == [sids[2]]
    assert await store.compliance("CA" + "ff" * 16) is None


async def test_the_report_indexes_are_trimmed_to_retention(store: Store) -> None:
    old, new = "CA" + "0a" * 16, "CA" + "0b" * 16
    await store.save_compliance(report(old, False, 1000.0))  # long past the retention window
    await store.save_compliance(report(new, False, time.time()))
    assert await store.compliance_calls(failed=True) == [new]
    assert await store.compliance_calls() == [new]


async def test_an_unreadable_stored_report_is_none_not_a_crash(store: Store) -> None:
    await store.client.set(store.keys.compliance(CALL), b"{not json")
    assert await store.compliance(CALL) is None
    await store.client.hset(store.keys.alerts(CALL), "x|y", b"garbage")
    assert await store.alerts(CALL) == []
