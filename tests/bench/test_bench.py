"""Smoke tests of ``bridge bench e2e|load|fanout`` at tiny sizes: outputs exist and hold sane numbers.

No timing is asserted: only that frames were measured, none lost, and reports and plots written.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bridge.bench import common, e2e
from bridge.cli import main
from bridge.testing import ScriptedDeepgramServer


def _outputs(out: Path, *pngs: str) -> dict[str, object]:
    assert (out / "report.md").read_text().startswith("# Bridge")
    for png in pngs:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result: dict[str, object] = json.loads((out / "result.json").read_text())
    return result


def test_percentiles_and_churn() -> None:
    p = common.summarize([0.001 * i for i in range(100, 0, -1)])  # unsorted input: summarize sorts
    assert p.n == 100 and p.max == pytest.approx(100.0) and p.mean == pytest.approx(50.5)
    # Linear interpolation between closest ranks, as numpy.percentile's default does.
    assert (p.p50, p.p95, p.p99) == (pytest.approx(50.5), pytest.approx(95.05), pytest.approx(99.01))
    # "hello" -> "hello there" extends; "hello their" rewrites one word; the final resets the utterance.
    assert e2e.churn([(False, "hello"), (False, "hello there"), (False, "hello their"), (True, "Hello, their!")]) == (
        3, 1, 1, 2)


def test_histogram_quantiles_from_metrics_text() -> None:
    text = "\n".join([
        "# TYPE x_seconds histogram",
        'x_seconds_bucket{le="0.01"} 50.0', 'x_seconds_bucket{le="0.1"} 100.0', 'x_seconds_bucket{le="+Inf"} 100.0',
        "x_seconds_count 100.0", "x_seconds_sum 2.0", "",
    ])
    q = common.histogram_quantiles(text, "x_seconds")
    assert q.count == 100 and q.p50 == pytest.approx(10.0) and 10.0 < q.p99 <= 100.0


def test_unknown_kind_is_an_error() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "nope"])
    assert exc.value.code == 2


def test_cpu_meter_counts_this_process_busy() -> None:
    """The meter agrees with the process's own CPU clock, however busy the box is (no wall-clock bound)."""
    meter = common.CpuMeter([os.getpid()])
    cpu0, wall0 = time.process_time(), time.monotonic()
    end = cpu0 + 0.3
    while time.process_time() < end:
        pass
    cores = meter.read()
    expected = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    assert cores == pytest.approx(expected, abs=0.05 + 0.1 * expected)  # /proc ticks are 10 ms
    assert cores <= 1.05  # one thread


def test_load_smoke(tmp_path: Path) -> None:
    out = tmp_path / "load"
    assert main(["bench", "load", "--calls", "2,3", "--workers", "1", "--seconds", "1", "--out", str(out)]) == 0
    result = _outputs(out, "latency_vs_calls.png", "latency_distributions.png")
    steps = result["steps"]
    assert isinstance(steps, list) and steps
    first = steps[0]
    assert first["calls"] == 2 and first["frames_sent"] > 0
    assert first["frames_lost"] == 0 and first["failed_calls"] == 0
    assert first["frames_received"] == first["frames_sent"]
    assert first["latency"]["n"] > 0 and 0 < first["latency"]["p50"] <= first["latency"]["p99"]
    assert first["bridge_rss_mib"] > 20  # a real bridge process was measured (Python + app)
    assert "null recognizer" in str(result["recognizer"])


def test_fanout_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fanout"
    argv = ["fanout", "--subscribers", "2", "--seconds", "3", "--slow-text-bytes", "1024", "--out", str(out)]
    assert main(["bench", *argv]) == 0
    result = _outputs(out, "latency_distributions.png")
    assert result["subscribers_ws"] == 1 and result["subscribers_sse"] == 1
    assert result["finals_sent"] > 0 and result["missed_total"] == 0
    assert result["latency_all"]["n"] > 0  # type: ignore[index]


@pytest.mark.parametrize(("client_procs", "clients", "slow_text_bytes"), [(0, "lib", 1024), (2, "lean", 0)])
def test_fanout_multi_call_smoke(tmp_path: Path, client_procs: int, clients: str, slow_text_bytes: int) -> None:
    """``--calls 2``: subscribers spread evenly over two calls, each call measured on its own; with
    ``--client-procs 2 --clients lean`` lean subscribers run in two worker processes (and
    ``--slow-text-bytes 0`` measures the whole call, without the slow subscriber)."""
    out = tmp_path / "fanout-calls"
    argv = ["fanout", "--calls", "2", "--subscribers", "4", "--connect-batch", "3", "--seconds", "3",
            "--slow-text-bytes", str(slow_text_bytes), "--client-procs", str(client_procs), "--clients", clients,
            "--out", str(out)]
    assert main(["bench", *argv]) == 0
    result = _outputs(out, "latency_distributions.png")
    assert result["calls"] == 2 and result["subscribers_ws"] == 2 and result["subscribers_sse"] == 2
    assert result["connect_failures"] == 0 and result["subscriber_errors"] == {}
    assert result["missed_total"] == 0 and result["duplicated_total"] == 0 and result["missed_by_all"] == []
    per_call = result["per_call"]
    assert isinstance(per_call, list) and [c["call"] for c in per_call] == [1, 2]
    for call in per_call:
        assert call["subscribers"] == 2 and call["finals_sent"] > 0
        assert call["missed"] == 0 and call["duplicated"] == 0 and call["latency"]["n"] > 0
    assert result["finals_sent"] == sum(c["finals_sent"] for c in per_call)
    assert result["per_call_p99_min_ms"] <= result["per_call_p99_max_ms"]  # type: ignore[operator]
    assert result["worst_subscriber_p99_ms"] > 0  # type: ignore[operator]
    assert result["bridge_cores"] > 0 and result["harness_cores"] > 0  # type: ignore[operator]
    assert result["client_procs"] == client_procs and result["clients"] == clients
    if not slow_text_bytes:
        assert result["latency_during_slow"]["n"] == 0 and "skipped" in (out / "report.md").read_text()  # type: ignore[index]
    lag_n = result["subscriber_loop_lag"]["n"]  # type: ignore[index]
    assert (lag_n > 0) == (client_procs > 0)
    assert "Per call (phase 1)" in (out / "report.md").read_text()


@pytest.fixture
def scripted_url() -> Iterator[str]:
    """A ScriptedDeepgramServer on its own loop in a thread (the benchmark runs its own event loop)."""
    loop = asyncio.new_event_loop()
    server = ScriptedDeepgramServer(window_seconds=0.5)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server.url
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_e2e_smoke(tmp_path: Path, scripted_url: str) -> None:
    out = tmp_path / "e2e"
    argv = ["e2e", "--runs", "1", "--speed", "4", "--recognizer-url", scripted_url, "--out", str(out)]
    assert main(["bench", *argv]) == 0
    result = _outputs(out, "latency_distributions.png")
    runs = result["runs"]
    assert isinstance(runs, list) and len(runs) == 1
    assert runs[0]["finals"] > 0 and runs[0]["partials"] > 0
    assert runs[0]["wer"] > 0.9  # scripted words are checksums: nearly every reference word is missed
    assert result["partial_latency"]["n"] > 0  # type: ignore[index]
    assert result["metrics_partial_latency"]["count"] > 0  # type: ignore[index]


def test_recognizer_bench_scores_live_next_to_batch(tmp_path: Path) -> None:
    """One short call as its own fixture set, streamed fast: both WERs and the latencies are reported."""
    import shutil

    from bridge.bench.recognizer import loops
    from tests.support import SHORT_CALL

    fixtures = tmp_path / "fixtures"
    (fixtures / "sets" / "tiny").mkdir(parents=True)
    for suffix in (".wav", ".json"):
        shutil.copy(SHORT_CALL.with_suffix(suffix), fixtures / "sets" / "tiny" / f"call{suffix}")
    out = tmp_path / "out"
    argv = ["bench", "recognizer", "--fixtures", str(fixtures), "--sets", "tiny", "--speed", "4", "--model",
            "tiny.en", "--batch-model", "tiny.en", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "bench_recognizer.json").read_text())
    (row, total) = report["sets"]
    assert row["set"] == "tiny" and total["set"] == "all" and row["calls"] == 1
    assert 0.0 <= row["live_wer"] < 0.5 and 0.0 <= row["batch_wer"] < 0.5  # tiny.en on a clean call
    from bridge.wer import normalize

    turns = json.loads(SHORT_CALL.with_suffix(".json").read_text())["turns"]
    assert row["ref_words"] == sum(len(normalize(t["text"])) for t in turns)  # every reference word was scored
    assert row["ttfp_p50"] is not None and row["final_lag_p50"] is not None and row["partials"] > 0
    assert "| tiny | 1 |" in (out / "report.md").read_text()
    assert loops("is there anything else I is there anything else I is there") and not loops("it was the best")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fallback", [False, True])
def test_outage_bench_runs_and_reports(redis_url: str, tmp_path: Path, fallback: bool) -> None:
    out = tmp_path / "outage"
    argv = ["bench", "outage", "--before", "1.2", "--outage", "1", "--after", "1.5", "--catchup", "2",
            "--fallback-after", "0.5", "--redis-url", redis_url, "--out", str(out)]  # fmt: skip
    assert main([*argv, "--fallback"] if fallback else argv) == 0  # nothing lost or doubled
    result = json.loads((out / "result.json").read_text())
    assert (out / "report.md").read_text().startswith("# Recovery after a recognizer outage")
    assert result["finals"] > 0 and result["lost"] == 0 and result["doubled"] == 0
    names = [span["recognizer"] for span in result["served"]]
    assert names == (["deepgram", "elevenlabs"] if fallback else ["deepgram"])
    assert (result["time_to_current_s"] is None) is fallback


def test_regression_a_card_number_is_not_counted_as_a_looping_partial() -> None:
    from bridge.bench.recognizer import loops

    assert not loops("Sure it is 4111 1111 1111 1111 It expires 0928")
    assert loops("is there anything else I is there anything else I")
    assert loops("1111 " * 6)  # 24 digits: more than any card


def test_latency_is_measured_from_the_first_audible_frame_of_a_turn() -> None:
    # The first fixtures' turn times include the TTS files' leading breath (0.2-0.35 s): time to
    # first partial measured from there credited the recognizer with time nobody spoke.
    from bridge.audio import pcm16_to_mulaw, silence
    from bridge.bench.fixture_sets import Turn, speech_span

    t = np.arange(8000) / 8000
    tone = pcm16_to_mulaw((8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16).tobytes())
    audio = silence(1.0) + silence(0.3) + tone + silence(0.5)
    span = speech_span(Turn("inbound", 1.0, 2.8, "hello"), audio)
    assert span.start == pytest.approx(1.3, abs=0.021)
    assert span.end == pytest.approx(2.3, abs=0.021)
    quiet = Turn("inbound", 0.0, 0.9, "")
    assert speech_span(quiet, audio) == quiet  # nothing audible: the turn as written


def test_regression_capacity_keeps_n_calls_on_the_line_for_the_whole_window(tmp_path: Path, scripted_url: str) -> None:
    """Playing each fixture call once left two of eight calls on for the last third of a capacity run
    (the calls last 15-60 s), so "8 calls" measured about 4.5 on average. Each slot now plays calls
    back to back for the window, and only calls that ended inside it are scored."""
    import soundfile as sf

    from bridge.bench.fixture_sets import FixtureCall, Turn
    from bridge.bench.recognizer import QUERY, run_concurrent

    t = np.arange(16000) / 8000
    speech = (0.3 * np.sin(2 * np.pi * 300 * t) * (t > 0.5) * (t < 1.5)).astype(np.float32)
    wav = tmp_path / "two_seconds.wav"
    sf.write(wav, np.stack([speech, np.zeros_like(speech)], axis=1), 8000, subtype="ULAW")
    call = FixtureCall("tiny", "two_seconds", wav, 2.0, {"inbound": "hello", "outbound": ""},
                       (Turn("inbound", 0.5, 1.5, "hello"),))  # fmt: skip
    summary = asyncio.run(run_concurrent(scripted_url, [call], 2, 1.0, QUERY, None, duplicate_lead=0.0, seconds=5.0))
    assert summary["calls_scored"] == 4  # two slots, each with calls at 0-2 s and 2-4 s; the one at 4-6 s ends late
    assert summary["wall_seconds"] >= 5.0
    assert summary["final_lag"]["n"] >= 4
