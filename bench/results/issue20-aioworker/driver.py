"""Alternate main's aiecs_worker (PYTHONPATH override) and this branch's, asyncio chat drain."""
import json, os, statistics, sys, time
sys.path.insert(0, os.getcwd())
from bench import procs, throughput
from bench.procs import AIECS_APP, ROOT

n = int(sys.argv[1]); repeats = int(sys.argv[2]); out = sys.argv[3]
sides = sys.argv[4].split(",") if len(sys.argv) > 4 else ["main", "branch"]
BASE = "/tmp/h4-base/packages/worker/src"
procs.install_signal_handlers()
runs = {s: [] for s in sides}
try:
    for r in range(repeats):
        for side in sides:
            env = {"PYTHONPATH": f"{BASE}:{ROOT}"} if side == "main" else {}
            db = f"sqlite:///{procs.tmpdir('hist')}/h.db"
            load = os.getloadavg()[0]
            d = throughput.drain(AIECS_APP, n=n, kind="chat", warm=8, users=throughput.CHAT_USERS,
                                 recorder=db, pool="asyncio", processes=2, concurrency=200,
                                 extra_env=env)
            d["load"] = load
            runs[side].append(d)
            print(side, r, f"load {load:.1f} per_s {d['per_s']:.0f} workers {d['worker_cpu_ms']:.2f} "
                  f"redis {d['redis_cpu_ms']:.3f} cmds {d['commands']:.1f} rt {d['round_trips']:.2f} "
                  f"producer {d['client_cpu_ms']:.2f} failed {d['failed']}", flush=True)
            json.dump(runs, open(out, "w"), indent=1)
finally:
    procs.cleanup()
for side in sides:
    rs = runs[side]
    if not rs: continue
    med = lambda k: statistics.median(x[k] for x in rs)
    print(side, {k: round(med(k), 3) for k in ("per_s", "worker_cpu_ms", "workers_cpu_ms", "redis_cpu_ms",
          "client_cpu_ms", "commands", "round_trips", "load")})
    print(side, "by_command", rs[-1]["by_command"])
