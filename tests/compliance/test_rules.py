"""The rules file: the shipped default, TOML and YAML, and every way a file is refused at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.compliance.rules import RulesError, default_rules, load
from bridge.settings import Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]

GOOD_TOML = """
fuzzy = 90
[[rules]]
id = "greeting"
kind = "required"
track = "outbound"
within_seconds = 10
phrases = ["good morning", "hello"]
"""

GOOD_YAML = """
fuzzy: 90
rules:
  - id: greeting
    kind: required
    track: outbound
    within_seconds: 10
    phrases: ["good morning", "hello"]
"""


def test_the_shipped_default_has_the_rules_the_issue_names() -> None:
    rules = {r.id: r for r in default_rules().rules}
    disclosure = rules["recording_disclosure"]
    assert (disclosure.kind, disclosure.track, disclosure.within_seconds) == ("required", "outbound", 30)
    assert rules["forbidden_promises"].kind == "forbidden"
    assert {"cancellation", "supervisor", "lawyer"} <= {r.id for r in default_rules().of_kind("alert")}
    assert Settings().compliance_rules == default_rules() == Settings.from_env({}).compliance_rules


def test_toml_and_yaml_files_say_the_same(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text(GOOD_TOML)
    (tmp_path / "r.yaml").write_text(GOOD_YAML)
    assert load(tmp_path / "r.toml") == load(tmp_path / "r.yaml")
    settings = Settings.from_env({"BRIDGE_COMPLIANCE_RULES": str(tmp_path / "r.yaml")})
    assert [r.id for r in settings.compliance_rules.rules] == ["greeting"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[[rules]]\nid = 'a'\nkind = 'required'\nphrases = ['x']\ncolour = 'red'\n", "unknown field"),
        ("[[rules]]\nid = 'a'\nkind = 'maybe'\nphrases = ['x']\n", "kind"),
        ("[[rules]]\nid = 'a'\nkind = 'alert'\nphrases = ['x']\n[[rules]]\nid = 'a'\nkind = 'alert'\n"
         "phrases = ['y']\n", "appears twice"),
        ("[[rules]]\nid = 'Bad Id'\nkind = 'alert'\nphrases = ['x']\n", "rule id"),
        ("[[rules]]\nid = 'a'\nkind = 'alert'\nphrases = []\n", "phrases"),
        ("[[rules]]\nid = 'a'\nkind = 'alert'\nphrases = ['... x']\n", "starts or ends with"),
        ("[[rules]]\nid = 'a'\nkind = 'alert'\nphrases = ['!!']\n", "no word"),
        ("[[rules]]\nid = 'a'\nkind = 'alert'\nphrases = ['a ... b ... c ... d ... e']\n", "3 gaps"),
        ("[[rules]]\nid = 'a'\nkind = 'alert'\nphrases = ['" + "w " * 17 + "']\n", "16 words"),
        ("fuzzy = 20\n[[rules]]\nid = 'a'\nkind = 'alert'\nphrases = ['x']\n", "between 50 and 100"),
        ("[[rules]]\nid = 'a'\nkind = 'alert'\nwithin_seconds = 5\nphrases = ['x']\n", "no window"),
        ("rules = [\n", "Invalid"),
        ("", "rules"),
    ],
)
def test_a_bad_rules_file_is_refused_with_its_reason(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(content)
    with pytest.raises(RulesError, match=reason):
        load(path)
    with pytest.raises(SettingsError, match=f"BRIDGE_COMPLIANCE_RULES: .*{reason}"):
        Settings.from_env({"BRIDGE_COMPLIANCE_RULES": str(path)})


def test_a_missing_or_unknown_kind_of_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        Settings.from_env({"BRIDGE_COMPLIANCE_RULES": str(tmp_path / "nope.toml")})
    (tmp_path / "rules.json").write_text("{}")
    with pytest.raises(SettingsError, match=r"\.toml, \.yaml or \.yml"):
        Settings.from_env({"BRIDGE_COMPLIANCE_RULES": str(tmp_path / "rules.json")})


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["worker"]])
def test_bridge_refuses_to_start_on_a_bad_rules_file_in_one_line(tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - id: a\n    kind: alert\n")  # no phrases
    env = {**os.environ, "BRIDGE_COMPLIANCE_RULES": str(bad), "PYTHONPATH": str(ROOT),
           "REDIS_URL": "redis://127.0.0.1:1/0", "BRIDGE_RECORDING_DIR": str(tmp_path / "rec")}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "bridge.cli", *command], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "BRIDGE_COMPLIANCE_RULES" in lines[0] and "phrases" in lines[0], done.stderr
