"""Smoke test of ``python -m bench.guarantees`` (issue 20, item 4): it runs end to end
on a few calls per part, writes its JSON, and what it counts is what the scripts do.
Nothing here looks at how fast anything was."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed")


def test_guarantees_measures_every_part_and_counts_what_the_scripts_do(tmp_path):
    out = tmp_path / "g.json"
    run = subprocess.run([sys.executable, "-m", "bench.guarantees", "--n", "30", "--out",
                          str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    parts = result["parts"]
    from bench.guarantees import PARTS

    assert set(parts) == {*PARTS, "recorder.row"}
    for name, part in parts.items():
        # the recorder's CPU is read from /proc in clock ticks (10 ms): 30 rows may be 0
        assert part["n"] > 0 and (part["client_us"] > 0 or name == "recorder.row"), name
        assert part["redis_us"] >= 0, name
        if name != "poison.guard":  # the guard talks to no one
            assert part["commands"] > 0 and part["round_trips"] > 0, name
    assert parts["poison.guard"]["commands"] == 0

    def by(name):
        return parts[name]["by_command"]

    # one event on an existing task: numbered, logged, published, in one script call
    event = {"evalsha": 1, "incr": 1, "xadd": 1, "publish": 1}
    assert by("worker.event") == event and by("pending.event") == event
    assert parts["worker.event"]["round_trips"] == 1
    # begin of a PENDING record: read, write, leave the pending index, the lease, RUNNING
    assert by("worker.begin") == {"evalsha": 1, "hmget": 1, "hset": 1, "zrem": 1, "sadd": 1,
                                  **event}
    # the PENDING record, its event and the admission: two scripts, one round trip
    assert by("pending.record")["evalsha"] == 2 and parts["pending.record"]["round_trips"] == 1
    assert by("pending.record")["xadd"] == by("pending.record")["publish"] == 1
    # the history outbox: HGETALL + XADD inside the terminal script, nothing else
    on, off = by("worker.terminal"), by("worker.terminal_nohistory")
    assert on["xadd"] == 2 and off["xadd"] == 1 and on["hgetall"] == 1 and "hgetall" not in off
    assert parts["worker.terminal"]["commands"] - parts["worker.terminal_nohistory"][
        "commands"] == 2
    # Celery's result: SETEX + PUBLISH (in MULTI/EXEC, after its GET)
    assert by("celery.result")["setex"] == by("celery.result")["publish"] == 1
    # budgets settle in the terminal script only when on
    assert "hincrby" in by("worker.terminal_budgets") and "hincrby" not in on
    assert result["guarantees"] and result["totals"]["chat"]["all_us"] > 0
    assert "| guarantee |" in run.stdout
