"""Every metric the bridge declares is fed by some code path (issue #10: ``bridge_streams_rejected_total``
and ``bridge_finals_total`` were declared, documented to Prometheus, and never incremented)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from bridge.metrics import Metrics

PACKAGE = Path(__file__).resolve().parents[1] / "bridge"


def _declared() -> set[str]:
    tree = ast.parse((PACKAGE / "metrics.py").read_text())
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Metrics"]
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    return {
        target.attr
        for node in ast.walk(init)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Attribute) and target.attr != "registry"
    }


def test_every_declared_metric_is_fed_outside_its_declaration() -> None:
    sources = "\n".join(p.read_text() for p in PACKAGE.rglob("*.py") if p.name != "metrics.py")
    declared = _declared()
    assert len(declared) >= 20 and declared <= set(vars(Metrics()))
    unused = sorted(name for name in declared if not re.search(rf"\b(?:metrics|m)\.{name}\b", sources))
    assert unused == []


async def test_stored_and_duplicate_finals_are_counted(store: object) -> None:
    from bridge import events
    from bridge.store import FinalsWriter, Store

    assert isinstance(store, Store)
    metrics = Metrics()
    writer = FinalsWriter(
        store, on_final=lambda stored: (metrics.finals if stored else metrics.finals_duplicate).inc()
    )
    final = events.Final(call_sid="CA" + "0" * 32, id=events.final_id("inbound", 1.0), track="inbound", start=1.0,
                         end=2.0, text="hello")  # fmt: skip
    writer.submit(final)
    writer.submit(final)  # a retry: stored once, counted as a duplicate
    assert await writer.flush(5)
    await writer.aclose()
    assert (metrics.finals._value.get(), metrics.finals_duplicate._value.get()) == (1, 1)
