"""What ``WAIT 1`` would cost a terminal transition (docs/operations.md, "Redis
Sentinel"): the latency of one terminal-sized write to a master with one replica, alone
and followed by ``WAIT 1 1000`` in the same round trip. Loopback, so it measures
Redis's side (replication and acknowledgement); add your network's replica round trip.

    uv run python -m bench.replication_wait --writes 3000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from .procs import Redis, cleanup


def _run(client, n: int, wait: bool) -> dict[str, float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        pipe.hset(f"k{i}", mapping={"status": "completed", "result": "x" * 200})
        if wait:
            pipe.execute_command("WAIT", 1, 1000)
        pipe.execute()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"mean_us": round(statistics.mean(times) * 1e6),
            "p50_us": round(times[n // 2] * 1e6), "p99_us": round(times[int(n * 0.99)] * 1e6)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=3000)
    args = parser.parse_args(argv)
    master, replica = Redis().start(), Redis().start()
    try:
        replica.client.replicaof("127.0.0.1", master.port)
        deadline = time.monotonic() + 30
        while replica.client.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.1)
        out = {}
        for rnd in range(2):  # alternated, twice
            for wait in (False, True):
                out[f"{'wait' if wait else 'plain'}_{rnd}"] = _run(master.client, args.writes,
                                                                  wait)
        print(json.dumps(out, indent=2))
    finally:
        replica.close()
        master.close()
        cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
