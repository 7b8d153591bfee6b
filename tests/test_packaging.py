"""The wheel stands alone: built from this checkout and run from outside it, ``bridge demo`` finds the
call shipped in the package and transcribes it.

The wheel is unpacked onto ``PYTHONPATH`` (its dependencies come from this environment), and the
command runs in an empty directory, so nothing of the repository is within reach.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_built_wheel_runs_the_demo_outside_the_repository(tmp_path: Path) -> None:
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ beside the sources
    shutil.copytree(ROOT / "bridge", src / "bridge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "bridge/data/calls/support_call.wav" in names and "bridge/static/dashboard.html" in names
    assert "bridge/compliance/default_rules.toml" in names  # the default compliance rules
    assert {"bridge/static/dashboard.css", "bridge/static/js/main.js", "bridge/static/js/live.js"} <= set(names)
    assert not any(n.startswith(("tests/", "fixtures/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "BRIDGE_REDIS_DIR": str(elsewhere / "redis"),
           "BRIDGE_RECORDING_DIR": str(elsewhere / "rec"), "REDIS_URL": ""}  # fmt: skip
    where = subprocess.run([sys.executable, "-c", "import bridge; print(bridge.__file__)"], env=env, cwd=elsewhere,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(site))
    demo = subprocess.run([sys.executable, "-m", "bridge.cli", "demo", "--speed", "6"], env=env, cwd=elsewhere,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert "Replaying support_call.wav" in demo.stdout
    assert "Stored transcript (Redis):" in demo.stdout and "refund" in demo.stdout.lower()
    assert list((elsewhere / "rec").glob("CA*.wav"))
