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
