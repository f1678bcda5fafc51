"""The driver of these runs: the chat drain under ``--pool asyncio`` (bench.throughput.drain
as the chat scenario runs it: 2 processes at concurrency 200, 20 users, history recorder
on, fresh Redis per run), main's packages (a worktree of main at /work/wt/h21pool-base)
first on ``PYTHONPATH`` for the ``main`` side, the branch's (a worktree frozen at the
measured commit, /work/wt/h21pool-bench) for the other; alternated (even rounds main
first). ``python driver.py N ROUNDS OUT.json``."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, "/work/wt/h21pool")
from bench import throughput  # noqa: E402
from bench.procs import AIECS_APP, ROOT, tmpdir  # noqa: E402

PACKAGES = ("worker", "core", "openai-compat")


def path_of(tree: str) -> str:
    return ":".join(f"/work/wt/{tree}/packages/{p}/src" for p in PACKAGES) + f":{ROOT}"


def main() -> None:
    n, rounds, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    variants = [("main", {"PYTHONPATH": path_of("h21pool-base")}),
                ("branch", {"PYTHONPATH": path_of("h21pool-bench")})]
    res = []
    for r in range(rounds):
        for name, env in (variants if r % 2 == 0 else variants[::-1]):
            load = os.getloadavg()
            db = f"sqlite:///{tmpdir('hist')}/h.db"
            d = throughput.drain(AIECS_APP, n=n, kind="chat", warm=8, users=20, recorder=db,
                                 processes=2, pool="asyncio", concurrency=200, extra_env=env)
            d.update(variant=name, round=r, load=load)
            res.append(d)
            print(f"{name:7s} r{r} load {load[0]:.2f} per_s {d['per_s']:.0f} "
                  f"cpu {d['cpu_ms']:.2f} workers {d['worker_cpu_ms']:.2f} "
                  f"redis {d['redis_cpu_ms']:.2f} prod {d['client_cpu_ms']:.2f} "
                  f"rt {d['round_trips']:.2f} cmds {d['commands']:.1f}", flush=True)
            out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
