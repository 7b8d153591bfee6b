"""The layout's rules, checked on every run: imports point down the data flow, no cycle (imports inside
functions count), the live path never loads the batch engine, modules stay small, and the README
documents every environment variable the settings read.

Run ``python -m pytest tests/test_architecture.py -q`` to see them; the cycle check prints the loop.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bridge"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every bridge module ``name`` imports, at module level or inside functions."""
    deps: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                deps.add(target)
    return deps


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if there is any (a package importing its own submodules is not one)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if node.startswith(dep + "."):
                continue  # a submodule importing its package's __init__
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("bridge.store", "bridge.batch"),  # the store keeps what the batch pass makes; it never runs it
        ("bridge.store", "bridge.call"),
        ("bridge.store", "bridge.live"),
        ("bridge.recognizers", "bridge.call"),
        ("bridge.recognizers", "bridge.store"),
        ("bridge.twilio", "bridge.call"),
        ("bridge.live", "bridge.call"),
        ("bridge.api", "bridge.batch"),
        ("bridge.embedded", "bridge.call"),
        ("bridge.events", "bridge.store"),
        ("bridge.compliance", "bridge.call"),  # the rules serve the call path and the worker; they run neither
        ("bridge.compliance", "bridge.batch"),
        ("bridge.compliance", "bridge.live"),
        ("bridge.redact", "bridge.call"),  # redaction serves the call path, the worker and the API; it runs none
        ("bridge.redact", "bridge.batch"),
        ("bridge.redact", "bridge.live"),
        ("bridge.redact", "bridge.api"),
    ],
)
def test_imports_point_down_the_flow(low: str, high: str) -> None:
    graph = _graph()
    offenders = [
        (mod, dep)
        for mod, deps in graph.items()
        if mod == low or mod.startswith(low + ".")
        for dep in deps
        if dep == high or dep.startswith(high + ".")
    ]
    assert not offenders, f"{low} must not import {high}: {offenders}"


def test_the_live_path_does_not_load_the_batch_engine() -> None:
    code = (
        "import sys; import bridge.api, bridge.live.endpoints, bridge.twilio.media, bridge.call.manager; "
        "print(','.join(sorted(m for m in sys.modules if m.startswith(('faster_whisper', 'ctranslate2', "
        "'bridge.batch', 'bridge.embedded', 'jiwer')))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert loaded.stdout.strip() == ""


def test_no_module_is_oversized() -> None:
    big = {name: n for name, path in _modules().items() if (n := path.read_text().count("\n")) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def _env_vars_read() -> set[str]:
    tree = ast.parse((PACKAGE / "settings.py").read_text())
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"[A-Z][A-Z0-9_]{3,}", node.value)
    }


def _env_vars_documented() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Configuration") :]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]{3,})`", row.split("|")[1])}


def test_readme_documents_every_environment_variable() -> None:
    read, documented = _env_vars_read(), _env_vars_documented()
    assert read, "found no variable names in settings.py"
    assert read - documented == set(), "read by Settings but missing from the README's table"
    assert documented - read == set(), "in the README's table but read by nothing"


def test_the_repository_stands_alone() -> None:
    """Users have the repository, not the notes it was built from: nothing points outside it."""
    pattern = re.compile(r"\.\./shared|PROTOCOLS\.md|RECOGNIZER\.md|DESIGN\.md|/work/")
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "docs").rglob("*.md"), *(ROOT / "fixtures").rglob("*.md")]
    files.append(ROOT / "README.md")
    offenders = [str(p.relative_to(ROOT)) for p in files if pattern.search(p.read_text())]
    assert offenders == []
