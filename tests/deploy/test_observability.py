"""The alert rules and the Grafana dashboard in deploy/: valid for Prometheus, proven to fire, and about
metrics the bridge really exports (scraped from running ``bridge serve``, ``bridge worker`` and
``bridge recognizer`` processes)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bridge.store import Store
from bridge.testing import ScriptedDeepgramServer
from tests.support.bridges import BridgeProcess, recognizer_process, worker_process
from tests.support.nginx import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yml"
PROMETHEUS = DEPLOY / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "bridge.json"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (deploy/system-deps.sh)")
#: What Grafana puts in place of its variables before the query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$instance": ".*"}
#: The series a family of each type exposes (https://prometheus.io/docs/concepts/metric_types/).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60)


def _alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _dashboard_exprs() -> dict[str, str]:
    """Every query of the dashboard (panels and template variables), Grafana's variables filled in."""
    dashboard = _dashboard()
    panels = _panels(dashboard["panels"])
    raw = {f"panel {p['id']} {t['refId']}": t["expr"] for p in panels for t in p.get("targets", [])}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":  # label_values(metric, label) is Grafana's, not PromQL: keep the selector
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["definition"])
            assert match, var["definition"]
            raw[f"variable {var['name']}"] = match.group(1)
    out = {}
    for name, expr in raw.items():
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{name}: unknown Grafana variable in {expr}"
        out[name] = expr
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (parsed with the promql-parser library)."""
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            by_label = [m.value for m in node.matchers.matchers if m.name == "__name__"]
            names.update([node.name] if node.name else by_label)
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def exported_series(text: str) -> set[str]:
    """Every series name a /metrics page can carry, labelled families included before their first sample."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES[family.type]
    } | {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metric_names_are_read_from_the_expression_tree() -> None:
    expr = 'histogram_quantile(0.9, sum by (le) (rate(a_bucket{x="rate"}[5m]))) > on() absent(b) or {__name__="c"}'
    assert metric_names(expr) == {"a_bucket", "b", "c"}


@needs_promtool
def test_the_alert_rules_pass_promtool_check() -> None:
    checked = _promtool("check", "rules", ALERTS)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_the_alerts_fire_on_the_series_that_should_fire_them() -> None:
    tested = _promtool("test", "rules", ALERT_TESTS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    assert len(fired) >= 2 and fired <= set(_alert_exprs())
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    assert fired <= quiet, "each firing alert is also shown quiet before or after"


@needs_promtool
def test_prometheus_loads_the_rules(tmp_path: Path) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert [(PROMETHEUS.parent / f).resolve() for f in config["rule_files"]] == [ALERTS.resolve()]
    assert {job["job_name"] for job in config["scrape_configs"]} == {"bridge", "recognizer", "batch-worker"}
    checked = _promtool("check", "config", PROMETHEUS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stdout


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    (source,) = dashboard["__inputs"]  # Grafana asks for the Prometheus data source at import
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    panels = list(_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert 0 <= panel["gridPos"]["x"] and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${" + source["name"] + "}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query as Prometheus would (as recording rules of a throwaway file)."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(_dashboard_exprs().values())]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = _promtool("check", "rules", path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_every_metric_of_the_rules_and_the_dashboard_is_exported(
    redis_url: str, store: Store, tmp_path: Path, scripted: ScriptedDeepgramServer
) -> None:
    env = {"REDIS_URL": redis_url, "BRIDGE_REDIS_PREFIX": store.keys.prefix, "TWILIO_AUTH_TOKEN": "x",
           "BRIDGE_RECOGNIZER": "deepgram", "BRIDGE_RECOGNIZER_URL": scripted.url,
           "BRIDGE_RECOGNIZER_API_KEY": "unused"}  # fmt: skip
    nowhere = f"http://127.0.0.1:{free_port()}"
    processes = [
        BridgeProcess(tmp_path / "bridge", env),
        worker_process(tmp_path / "worker", env, "--engine", "deepgram", "--base-url", nowhere),
        recognizer_process(tmp_path / "recognizer", env, "--model", "tiny.en", "--final-model", "", "--workers", "1"),
    ]
    try:
        await asyncio.gather(*(p.start() for p in processes))
        pages = await asyncio.gather(*(p.metrics() for p in processes))
    finally:
        for p in processes:
            p.stop()
    exported = set().union(*(exported_series(page) for page in pages))
    assert {"bridge_partial_latency_seconds_bucket", "bridge_batch_backlog_oldest_seconds",
            "recognizer_decode_seconds_bucket"} <= exported  # one of each process, as a check of the check
    wanted = {name: metric_names(expr) for name, expr in {**_alert_exprs(), **_dashboard_exprs()}.items()}
    missing = {name: names - exported for name, names in wanted.items() if names - exported}
    assert missing == {}, "named in deploy/ but exported by no process of the bridge"
    assert all(wanted.values()), "a query that names no metric"
