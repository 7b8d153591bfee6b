"""The shipped rules judged on fixture calls as a recognizer heard them: misrecognised words still
count ("recordid", "monitered", "garantee", "supervisr"), near misses never pass a required rule."""

from __future__ import annotations

import pytest

from bridge.compliance.evaluate import evaluate
from bridge.compliance.matcher import similarity
from bridge.compliance.rules import default_rules, parse
from bridge.events import Alert
from bridge.transcripts import Redaction
from tests.compliance.support import CASES, case, transcript

RULES = default_rules()


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_call_is_judged_as_expected(name: str) -> None:
    report = evaluate(case(name), RULES)
    results = {r.id: r for r in report.rules}
    expect: dict[str, bool] = CASES[name]["expect"]
    for rule_id, passed in expect.items():
        assert results[rule_id].passed is passed, (rule_id, results[rule_id])
    assert report.passed is all(r.passed for r in report.rules if r.kind != "alert")
    if "alerts" in CASES[name]:
        matched = [r.id for r in report.rules if r.kind == "alert" and r.evidence]
        assert matched == CASES[name]["alerts"]
    if "forbidden_evidence" in CASES[name]:
        assert len(results["forbidden_promises"].evidence) == CASES[name]["forbidden_evidence"]


def test_a_passed_disclosure_points_at_the_words_that_said_it() -> None:
    heard = case("disclosure_recordid")
    report = evaluate(heard, RULES)
    (rule,) = [r for r in report.rules if r.id == "recording_disclosure"]
    (evidence,) = rule.evidence
    assert evidence.track == "outbound" and "recordid" in evidence.text
    words = heard.utterances[0].words
    call = next(w for w in words if w.word == "call")
    assert (evidence.start, evidence.end) == (call.start, words[-1].end)  # "call may be recordid."


def test_a_missing_disclosure_shows_what_the_agent_said_in_the_window() -> None:
    report = evaluate(case("no_disclosure_eval_p04"), RULES)
    assert report.passed is False
    (rule,) = report.failed_rules
    assert rule.id == "recording_disclosure"
    assert [e.track for e in rule.evidence] == ["outbound", "outbound"]
    assert rule.evidence[0].text.startswith("Hi, Summit Bank")


def test_the_report_carries_the_live_alerts_and_the_redactions() -> None:
    alert = Alert(call_sid="CA" + "c0" * 16, rule="supervisor", track="inbound", text="a supervisor", start=5.0,
                  end=10.0, final_id="inbound-0000005000", seq=2)  # fmt: skip
    span = Redaction(track="inbound", start=12.0, end=19.0, kind="card_number")
    report = evaluate(case("no_disclosure_eval_p04"), RULES, alerts=[alert], redactions=[span])
    assert report.alerts == [alert] and report.redactions == [span]
    assert report.job_key == "fixture" and report.evaluated_at > 0


def test_fuzziness_is_the_rule_files_to_set() -> None:
    rules = b'[[rules]]\nid = "d"\nkind = "required"\nphrases = ["call* ... monitor*"]\n'
    heard = transcript("CA" + "c1" * 16, [["outbound", 0.0, 2.0, "this call is monitered"]])
    assert similarity("monitor", "moniter") == pytest.approx(100 * 6 / 7)
    assert evaluate(heard, parse(rules)).passed is True  # default 85
    assert evaluate(heard, parse(b"fuzzy = 90\n" + rules)).passed is False
    assert evaluate(heard, parse(b"fuzzy = 100\n" + rules)).passed is False


def test_short_words_are_never_fuzzy() -> None:
    rules = parse(b'fuzzy = 50\n[[rules]]\nid = "hold"\nkind = "forbidden"\nphrases = ["hold"]\n')
    assert evaluate(transcript("CA" + "c2" * 16, [["outbound", 0.0, 1.0, "a bold move"]]), rules).passed is True
    assert evaluate(transcript("CA" + "c2" * 16, [["outbound", 0.0, 1.0, "please hold"]]), rules).passed is False
