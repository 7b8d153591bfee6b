"""``bridge compliance CALL_SID`` in a real process against the test Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from bridge.compliance.evaluate import evaluate
from bridge.compliance.rules import default_rules
from bridge.store import Store
from tests.compliance.support import case

ROOT = Path(__file__).resolve().parents[2]
SID = "CA" + "d4" * 16


async def run(store: Store, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": redis_url, "BRIDGE_REDIS_PREFIX": store.keys.prefix}
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bridge.cli", "compliance", *args],
                                   env=env, capture_output=True, text=True, timeout=60)  # fmt: skip


async def test_it_prints_the_report_or_says_why_not(store: Store, redis_url: str) -> None:
    missing = await run(store, redis_url, SID)
    assert missing.returncode == 1 and "no report" in missing.stderr
    assert (await run(store, redis_url, "CA-not-a-sid")).returncode == 2
    await store.save_compliance(evaluate(case("no_disclosure_eval_p04", SID), default_rules()))
    done = await run(store, redis_url, SID)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["call_sid"] == SID and printed["passed"] is False
    assert [r["id"] for r in printed["rules"] if not r["passed"]] == ["recording_disclosure"]
