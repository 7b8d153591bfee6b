"""The Kubernetes manifests say what the bridge understands: real settings, real commands, a drain that fits."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import build_parser
from tests.test_architecture import _env_vars_read

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def _documents() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def _containers() -> list[dict[str, Any]]:
    return [c for d in _documents() if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]]


def test_every_environment_variable_is_one_the_settings_read() -> None:
    names = {e["name"] for c in _containers() for e in c.get("env", [])}
    assert names and names - _env_vars_read() == set()


@pytest.mark.parametrize("container", _containers(), ids=lambda c: c["name"])
def test_every_command_parses(container: dict[str, Any]) -> None:
    command = container["command"]
    assert command[0] == "bridge"
    assert isinstance(build_parser().parse_args(command[1:]), argparse.Namespace)


def test_the_bridge_pods_outlive_their_drain() -> None:
    (bridge,) = [d for d in _documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == "bridge"]
    pod = bridge["spec"]["template"]["spec"]
    args = build_parser().parse_args(pod["containers"][0]["command"][1:])
    # preStop, the drain, then uvicorn's own shutdown (up to 5 s), must end before the kubelet's SIGKILL.
    pre_stop = pod["containers"][0].get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pause = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0.0
    assert pod["terminationGracePeriodSeconds"] > pause + args.drain_seconds + 5
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_the_ingress_routes_to_the_bridge_service_and_not_its_metrics() -> None:
    (ingress,) = [d for d in _documents() if d["kind"] == "Ingress"]
    paths = {(p["path"], p["pathType"]) for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {("/twilio", "Prefix"), ("/calls", "Prefix"), ("/browser", "Prefix"), ("/try", "Prefix"),
                     ("/", "Exact"), ("/static", "Prefix"), ("/search", "Exact")}  # fmt: skip
    services = {d["metadata"]["name"] for d in _documents() if d["kind"] == "Service"}
    backends = {p["backend"]["service"]["name"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]}
    assert backends <= services
