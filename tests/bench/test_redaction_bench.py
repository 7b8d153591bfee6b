"""``bridge bench redaction``: the command runs and reports the detector's figures on the text set."""

from __future__ import annotations

import subprocess
import sys

from tests.support import FIXTURES


def test_bench_redaction_reports_precision_and_recall() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "bench", "redaction", "--no-audio", "--fixtures", str(FIXTURES)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "precision 1.000, recall 1.000" in out.stdout, out.stdout + out.stderr
