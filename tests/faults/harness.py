"""Fault runs on real processes: send N echo tasks, inject a fault, count what became of them.

Counted from the durable event logs and the state hashes in Redis (not from the worker's
word): every execution sent must end with exactly one terminal event and the outcome its
input asked for.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.events import TERMINAL, read_events
from tests.support.redis_server import RedisServer

#: The pools every fault run goes through, and each one's worker concurrency.
POOLS = ["threads", "prefork", "asyncio"]
CONCURRENCY = {"threads": 8, "prefork": 2, "asyncio": 8}

USER = "fault"
REPORT = Path(__file__).resolve().parents[2] / "test-output" / "faults"


@dataclass
class Tally:
    """What became of the executions of one fault run."""

    scenario: str
    sent: int = 0
    completed_once: int = 0
    failed_as_asked: int = 0
    lost: int = 0
    duplicated: int = 0
    stuck: int = 0
    wrong: int = 0
    reruns: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.stuck or self.wrong)

    def row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "details"}


@dataclass
class FaultRun:
    """Sends echo tasks through the test process's Celery app to ``redis``'s workers."""

    redis: RedisServer
    n: int
    #: the broker, when it is not ``redis`` (RabbitMQ)
    broker_url: str | None = None
    expect_failed: set[str] = field(default_factory=set)
    ids: list[str] = field(default_factory=list)

    def send(self, *, delay=(0.1, 0.5), chunks=4, poison: int = 0) -> None:
        """Submit the run's executions from a client process, through the public API."""
        rng = random.Random(7)
        calls = []
        for i in range(self.n):
            task_id = f"f{uuid.uuid4().hex[:10]}"
            data = {"text": "one two three four", "chunks": chunks,
                    "delay": round(rng.uniform(*delay), 3)}
            if i < poison:
                data = {"text": "x", "fail": "crash"}
                self.expect_failed.add(task_id)
            self.ids.append(task_id)
            calls.append(dict(task_name="echo", user_id=USER, task_id=task_id, step=1,
                              mode="test", service="echo", input_data=data, context={}))
        send_from_client(calls, broker_url=self.broker_url or self.redis.url,
                         redis_url=self.redis.url)

    def started(self) -> int:
        client = self.redis.client()
        try:
            return sum(1 for t in self.ids
                       if client.hget(f"aiecs:t:{USER}:{t}:1:state", "started"))
        finally:
            client.close()

    def wait_started(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.started() < count:
            assert time.monotonic() < deadline, f"fewer than {count} executions started"
            time.sleep(0.05)

    def settle(self, timeout: float) -> None:
        """Wait until every execution is terminal (or the bound passes)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.terminal_count() == len(self.ids):
                return
            time.sleep(0.25)

    def terminal_count(self) -> int:
        client = self.redis.client()
        try:
            pipe = client.pipeline()
            for t in self.ids:
                pipe.hget(f"aiecs:t:{USER}:{t}:1:state", "status")
            return sum(1 for s in pipe.execute() if s and s.decode() in TERMINAL)
        except Exception:  # noqa: BLE001 - Redis restarting
            return 0
        finally:
            client.close()

    def tally(self, scenario: str, seconds: float, *, require_running: bool = True) -> Tally:
        """Count what became of each execution. ``require_running``: a completed execution
        must have its RUNNING event (not after a Redis that lost its log)."""
        tally = Tally(scenario, sent=len(self.ids), seconds=round(seconds, 1))
        client = self.redis.client()
        for t in self.ids:
            events = read_events(client, USER, t)
            state = client.hget(f"aiecs:t:{USER}:{t}:1:state", "status")
            state = state.decode() if state else None
            terminals = [e for e in events if e["type"] == "status" and e["status"] in TERMINAL]
            runs = [e for e in events if e["type"] == "status" and e["status"] == "running"]
            tally.reruns += max(0, len(runs) - 1)
            if require_running and terminals and terminals[0]["status"] == "completed" \
                    and not runs:
                tally.wrong += 1  # ran without its RUNNING event
                tally.details.append(f"{t}: completed without a RUNNING event")
            if len(terminals) > 1:
                tally.duplicated += 1
                tally.details.append(f"{t}: {len(terminals)} terminal events")
            elif state is None and not terminals:
                tally.lost += 1
                tally.details.append(f"{t}: no state, no terminal event")
            elif state not in TERMINAL or not terminals:
                tally.stuck += 1
                tally.details.append(f"{t}: state {state}, {len(terminals)} terminal events")
            else:
                want = "failed" if t in self.expect_failed else "completed"
                if terminals[0]["status"] == want == state:
                    if want == "completed":
                        tally.completed_once += 1
                    else:
                        tally.failed_as_asked += 1
                else:
                    tally.wrong += 1
                    tally.details.append(
                        f"{t}: ended {terminals[0]['status']} ({state}), expected {want}: "
                        f"{(terminals[0].get('error') or {}).get('message')}")
        client.close()
        record(tally)
        return tally


def send_from_client(calls: list[dict], *, broker_url: str, redis_url: str) -> None:
    """Submit ``calls`` (``execute_task`` keyword arguments, each optionally with an
    ``"__options__"`` dict for ``apply_async``, e.g. a priority) from a client process."""
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, REDIS_URL=redis_url)
    subprocess.run([sys.executable, "-m", "tests.faults.sender"], input=json.dumps(calls),
                   text=True, env=env, check=True, timeout=120,
                   cwd=Path(__file__).resolve().parents[2])


def record(tally: Tally) -> None:
    """Append the run's counts to test-output/faults/results.jsonl (for docs/reliability)."""
    REPORT.mkdir(parents=True, exist_ok=True)
    with open(REPORT / "results.jsonl", "a") as f:
        f.write(json.dumps(tally.row()) + "\n")


def counts(tallies: list[Tally]) -> Counter:
    return Counter({k: sum(getattr(t, k) for t in tallies)
                    for k in ("sent", "completed_once", "lost", "duplicated", "stuck")})


def table_rows(path: Path = REPORT / "results.jsonl") -> str:
    """The fault runs as rows of docs/reliability.md's table."""
    rows = []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        name, _, pool = r["scenario"].rpartition(" (")
        done = r["completed_once"] + r["failed_as_asked"]
        rows.append(f"| {name} | {pool.rstrip(')')} | {r['sent']} | {done} | {r['lost']} | "
                    f"{r['duplicated']} | {r['stuck']} | {r['reruns']} | {r['seconds']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table_rows())
