"""Smoke test of the benchmark harness: it still runs end to end and writes its report.

Only to keep ``bench/`` working: 20 no-op tasks through aiecs and the bare Celery anchor,
one repeat. Nothing here looks at how fast anything was.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed")


def test_bench_smoke_writes_report_and_results(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--scenarios", "noop",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    [raw] = (tmp_path / "results").glob("bench-*-smoke.json")
    results = json.loads(raw.read_text())
    block = results["scenarios"]["noop"]["threads -c8"]
    for variant in ("aiecs", "anchor"):
        [only] = block["runs"][variant]
        assert only["tasks"] == 20 and only["failed"] == 0
        assert only["commands"] > 0
    report = (tmp_path / "REPORT.md").read_text()
    assert "No-op drain" in report and "| tasks/s |" in report


def test_bench_smoke_allin_runs_history_budgets_and_templates(tmp_path):
    """The issue 18 scenario still runs: 20 chats with history (a recorder), budgets and
    templates on, and 20 with all off; no refusal, no failure, the recorder measured."""
    run = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--scenarios", "allin",
                          "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    [raw] = (tmp_path / "results").glob("bench-*-smoke.json")
    results = json.loads(raw.read_text())
    assert "errors" not in results, results.get("errors")
    block = results["scenarios"]["allin"]["chat, threads -c200"]
    [on], [off] = block["runs"]["on"], block["runs"]["off"]
    assert on["tasks"] == off["tasks"] == 20 and on["failed"] == off["failed"] == 0
    assert "recorder_cpu_ms" in on and "recorder_cpu_ms" not in off
    # budgets reserve and settle (HINCRBY on the user's counters) only when on
    assert on["by_command"].get("hincrby", 0) > 0 and "hincrby" not in off["by_command"]
    assert "Added CPU per chat task, all-in" in (tmp_path / "REPORT.md").read_text()


def test_bench_aiecs_env_reaches_aiecs_processes_only(tmp_path):
    """``--aiecs-env AIECS_HISTORY=0`` (an ablation) switches the history outbox off in
    aiecs's workers (no HGETALL + XADD in the terminal script) and is recorded in the
    results; the anchor's run is the same as ever."""
    run = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--scenarios", "noop",
                          "--aiecs-env", "AIECS_HISTORY=0", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    [raw] = (tmp_path / "results").glob("bench-*-smoke.json")
    results = json.loads(raw.read_text())
    assert results["params"]["aiecs_env"] == {"AIECS_HISTORY": "0"}
    block = results["scenarios"]["noop"]["threads -c8"]
    [aiecs], [anchor] = block["runs"]["aiecs"], block["runs"]["anchor"]
    assert aiecs["failed"] == 0 and aiecs["by_command"]["xadd"] > 0  # the task events
    assert "hgetall" not in aiecs["by_command"]  # the outbox's, in the terminal script
    assert anchor["commands"] == pytest.approx(18, abs=1)
