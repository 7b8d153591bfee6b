"""``bridge bench e2e|load|fanout``: the bridge's benchmark and load harness.

Each subcommand is bounded in time, talks to 127.0.0.1 only, prints progress on stderr and writes
``result.json``, ``report.md`` and PNG plots to ``--out`` (default ``bench-out/<kind>-<timestamp>``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

KINDS = ("e2e", "load", "fanout")


def main(argv: Sequence[str]) -> int:
    """Dispatch ``argv`` (``[kind, *options]``) to the benchmark of that kind."""
    args = list(argv)
    if not args or args[0] not in KINDS:
        print(f"usage: bridge bench {'|'.join(KINDS)} [options]", file=sys.stderr)
        return 2
    kind, rest = args[0], args[1:]
    command = " ".join(["bridge", "bench", *args])
    if kind == "e2e":
        from bridge.bench import e2e

        return e2e.main(rest, command)
    if kind == "load":
        from bridge.bench import load

        return load.main(rest, command)
    from bridge.bench import fanout

    return fanout.main(rest, command)


__all__ = ["KINDS", "main"]
