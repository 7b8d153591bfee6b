"""``GET /calls/{sid}/compliance`` and ``GET /compliance`` over real HTTP: 404 before the pass, the
failing calls newest first with rule and evidence, token scoping, bad parameters."""

from __future__ import annotations

import time

import httpx

from bridge.compliance.evaluate import evaluate
from bridge.compliance.rules import default_rules
from bridge.live import auth as tokens
from bridge.store import Store
from tests.compliance.support import case
from tests.support.served import Serve

SECRET = "s3cret-for-tests"
PASSES = "CA000000000000000000000000000000a1"
FAILS = "CA000000000000000000000000000000a2"
FAILS_LATER = "CA000000000000000000000000000000a3"
NO_REPORT = "CA000000000000000000000000000000a4"


async def setup_reports(store: Store) -> None:
    for sid in (PASSES, FAILS, FAILS_LATER, NO_REPORT):
        await store.call_started(sid, stream_sid="MZ" + sid[2:], tracks=["inbound", "outbound"], started_at=time.time())
        await store.call_ended(sid, ended_at=time.time())
    for sid, name in ((FAILS, "no_disclosure_eval_p04"), (PASSES, "disclosure_eval_p03"),
                      (FAILS_LATER, "forbidden_promises")):  # fmt: skip
        await store.save_compliance(evaluate(case(name, sid), default_rules()))


async def test_report_of_a_call_and_the_failing_calls(store: Store, served: Serve) -> None:
    await setup_reports(store)
    async with served() as srv, httpx.AsyncClient(base_url=srv.http) as client:
        r = await client.get(f"/calls/{NO_REPORT}/compliance")
        assert r.status_code == 404 and "batch pass" in r.json()["error"]
        assert (await client.get("/calls/CA000000000000000000000000000000ff/compliance")).status_code == 404
        assert (await client.get("/calls/nope/compliance")).status_code == 400

        report = (await client.get(f"/calls/{FAILS}/compliance")).json()
        assert report["call_sid"] == FAILS and report["passed"] is False
        assert set(report) >= {"call_sid", "passed", "rules", "alerts", "redactions"}
        rules = {r["id"]: r for r in report["rules"]}
        assert rules["recording_disclosure"]["passed"] is False
        assert set(rules["recording_disclosure"]["evidence"][0]) == {"track", "start", "end", "text"}
        assert (await client.get(f"/calls/{PASSES}/compliance")).json()["passed"] is True

        failing = (await client.get("/compliance", params={"failed": "true"})).json()["calls"]
        assert [c["call_sid"] for c in failing] == [FAILS_LATER, FAILS]
        assert [r["id"] for r in failing[1]["rules"]] == ["recording_disclosure"]
        assert failing[1]["rules"][0]["evidence"][0]["text"].startswith("Hi, Summit Bank")
        assert [r["id"] for r in failing[0]["rules"]] == ["forbidden_promises"]
        every = (await client.get("/compliance")).json()["calls"]
        assert [c["call_sid"] for c in every] == [FAILS_LATER, PASSES, FAILS]
        passing = (await client.get("/compliance", params={"failed": "false"})).json()["calls"]
        assert [(c["call_sid"], c["passed"], c["rules"]) for c in passing] == [(PASSES, True, [])]
        limited = (await client.get("/compliance", params={"failed": "true", "limit": "1"})).json()["calls"]
        assert [c["call_sid"] for c in limited] == [FAILS_LATER]
        assert (await client.get("/compliance", params={"failed": "maybe"})).status_code == 400
        assert (await client.get("/compliance", params={"limit": "x"})).status_code == 400


async def test_compliance_endpoints_need_a_token_for_the_call(store: Store, served: Serve) -> None:
    await setup_reports(store)
    only_fails = tokens.mint(SECRET, [FAILS], 60)
    every = tokens.mint(SECRET, ["*"], 60)
    async with served(subscriber_secret=SECRET) as srv, httpx.AsyncClient(base_url=srv.http) as client:
        assert (await client.get(f"/calls/{FAILS}/compliance")).status_code == 401
        assert (await client.get("/compliance?failed=true")).status_code == 401
        mine = {"Authorization": f"Bearer {only_fails}"}
        assert (await client.get(f"/calls/{FAILS}/compliance", headers=mine)).status_code == 200
        assert (await client.get(f"/calls/{FAILS_LATER}/compliance", headers=mine)).status_code == 403
        listed = (await client.get("/compliance?failed=true", headers=mine)).json()["calls"]
        assert [c["call_sid"] for c in listed] == [FAILS]
        listed = (await client.get("/compliance?failed=true", headers={"Authorization": f"Bearer {every}"})).json()
        assert [c["call_sid"] for c in listed["calls"]] == [FAILS_LATER, FAILS]
