"""Benchmarks and the soak test: every figure in ``docs/benchmarks.md`` comes from one of these.

``bridge bench recognizer|batch|e2e|load|fanout`` and ``bridge soak``. Each is bounded in time, talks
to 127.0.0.1 only, prints progress on stderr; e2e, load and fanout write ``result.json``,
``report.md`` and PNG plots to ``--out`` (default ``bench-out/<kind>-<timestamp>``).
"""
