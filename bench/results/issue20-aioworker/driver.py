"""The driver of these runs: the chat drain under ``--pool asyncio`` (bench.throughput.drain
as the chat scenario runs it: 2 processes at concurrency 200, history recorder on), main's
``aiecs_worker`` (extracted with ``git archive main packages/worker/src`` into
/tmp/h4-base) first on ``PYTHONPATH`` for the ``main`` side, this checkout's for the other;
alternated, ``repeats`` pairs.

    uv run python bench/results/issue20-aioworker/driver.py 1500 3 out.json [branch,main]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.getcwd())
from bench import procs, throughput  # noqa: E402
from bench.procs import AIECS_APP, ROOT  # noqa: E402

BASE = "/tmp/h4-base/packages/worker/src"
KEYS = ("per_s", "worker_cpu_ms", "workers_cpu_ms", "redis_cpu_ms", "client_cpu_ms",
        "commands", "round_trips", "load")


def main() -> None:
    n, repeats, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    sides = sys.argv[4].split(",") if len(sys.argv) > 4 else ["main", "branch"]
    procs.install_signal_handlers()
    runs: dict[str, list[dict]] = {s: [] for s in sides}
    try:
        for r in range(repeats):
            for side in sides:
                env = {"PYTHONPATH": f"{BASE}:{ROOT}"} if side == "main" else {}
                db = f"sqlite:///{procs.tmpdir('hist')}/h.db"
                load = os.getloadavg()[0]
                d = throughput.drain(AIECS_APP, n=n, kind="chat", warm=8,
                                     users=throughput.CHAT_USERS, recorder=db, pool="asyncio",
                                     processes=2, concurrency=200, extra_env=env)
                d["load"] = load
                runs[side].append(d)
                print(side, r, {k: round(d[k], 3) for k in KEYS}, flush=True)
                out.write_text(json.dumps(runs, indent=1))
    finally:
        procs.cleanup()
    for side, rs in runs.items():
        if rs:
            print(side, {k: round(statistics.median(x[k] for x in rs), 3) for k in KEYS})


if __name__ == "__main__":
    main()
