"""Smoke test of ``bench/history_query.py``: it still loads rows, serves them and writes
its results (300 rows, SQLite, two requests per scenario). Nothing here looks at how fast
anything was."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed")


def test_history_query_bench_runs(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.history_query", "--rows", "300",
                          "--databases", "sqlite", "--requests", "2", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "history-query-sqlite.json").read_text())
    assert report["rows"] == 300 and report["bytes"] > 0
    scenarios = report["scenarios"]
    assert scenarios["a user's first page (50)"]["n"] == 2
    assert all(s["p95_ms"] > 0 for s in scenarios.values())
