"""What each guarantee costs per task, in µs, by measurement (issue 20, item 4).

    uv run python -m bench.guarantees  # bench/results/guarantees-<date>.json
    uv run python -m bench.guarantees --n 500 --rounds 1 --out /tmp/g.json --no-recorder

A fresh redis-server (free port) and one child process that calls aiecs's real store
functions and scripts (and the real runtime's methods: a ``Runtime`` built as a worker
builds it, its lease keeper and cancel listener stopped so nothing else talks to Redis)
``--n`` times in a tight loop per *part*, one part after the other, the whole sequence
``--rounds`` times (medians reported: a switched pair, history on and off say, is
measured side by side in every round). Around each part the
parent reads Redis's counters (one ``INFO all``: commandstats, ``total_reads_processed``,
``used_cpu_user + used_cpu_sys``) and the child its own CPU (``time.process_time()``: every
thread of the process, the runtime's loop thread included). Per call: the client's CPU µs
(in the process that pays it: the producer or the worker), redis-server's CPU µs, the Redis
commands (those run inside Lua scripts included, the ``EVALSHA`` itself too) by name, and
the round trips (request batches Redis read: a pipeline counts once).

Each part works on executions of its own (distinct task ids over 20 users, as the chat
scenario spreads them), in the state a real task has when it pays that cost: the begin
finds the PENDING record ``.delay()`` made, the terminal step a RUNNING one, and so on;
what a part needs that is not its own cost (records, begun executions, contexts) is made
before its timed loop. Calls are sequential and awaited one by one (a worker pipelines
the events of many executions together under load: these are the costs of one alone).

The history recorder's CPU per row is measured last: an ``aiecs recorder`` (SQLite) drains
the outbox entries the terminal parts appended (``--no-recorder`` skips it).

Out: a table on stdout, the JSON (``--out``, default bench/results/guarantees-<date>.json)
with every part's figures, the derived guarantee rows and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import procs
from .procs import ROOT, Redis, base_env, stop, tmpdir

#: users the executions of a part are spread over (the chat scenario's 20, more for a large
#: --n): each part has its own users, so no user's fair-share window (400 wide) fills and
#: holds executions (then a part would pay for another's backlog)
USERS = 20
PER_USER = 100
NOOP_INPUT = {"text": "hello world", "chunks": 1}
CHAT_INPUT = {"model": "bench-model", "messages": [{"role": "user", "content": "hello"}],
              "max_output_tokens": 16}
#: the all-in scenario's budgets (a money and a tokens budget per user, never refusing)
BUDGETS = ('[{"period": "month", "kind": "usd", "soft": 1000000, "hard": 2000000},'
           ' {"period": "month", "kind": "tokens", "hard": 1000000000000}]')
PRICES = '{"openai/bench-model": {"input": 0.15, "output": 0.6}}'

#: part -> (who pays, what it is). Order = the order the child runs them.
PARTS: dict[str, tuple[str, str]] = {
    "celery.send": ("producer", "bare Celery's `apply_async(ignore_result=True)`: the "
                    "message alone (kombu publish, `LPUSH`), no result subscription"),
    "celery.delay": ("producer", "bare Celery's `.delay()` (kombu publish + result "
                     "subscription), no aiecs: the anchor's own send"),
    "celery.result": ("worker", "bare Celery's result store (`store_result`: the `GET` "
                      "guard, `SETEX` + `PUBLISH`), as the anchor's worker pays it"),
    "celery.get": ("producer", "bare Celery's `AsyncResult.get()` of a stored result "
                   "(already there: no wait)"),
    "aiecs.delay": ("producer", "aiecs's whole `execute_task.delay()`: Celery's send + "
                    "the PENDING record + admission"),
    "pending.record": ("producer", "`record_pending` (default: fair window on): the "
                       "PENDING record, its event and the admission, one pipeline"),
    "pending.record_nowindow": ("producer", "`record_pending` with AIECS_FAIR_WINDOW_FAST=0"
                                " (the admission script still runs, returns at once)"),
    "pending.event": ("producer", "the PENDING event alone (`publish_sync`: PUBLISH_LUA, "
                      "an existing task's keys)"),
    "admission.window": ("producer", "`ADMIT_LUA` alone on a fresh PENDING record, fair "
                         "window on (`admit_args` + `scripts.pipelined`)"),
    "quotas.admit_one": ("producer", "`admission.admit_one`: steps check + the quota "
                         "script (rate bucket, active set); `submit()` / `POST /tasks`"),
    "budgets.off": ("producer", "`hold_sent` + `record_pending` of a chat request, "
                    "AIECS_BUDGETS unset"),
    "budgets.none": ("producer", "the same, AIECS_BUDGETS='[]' (on; the user has no budget)"),
    "budgets.on": ("producer", "the same, AIECS_BUDGETS = money + tokens per user: the "
                   "reservation in the PENDING script"),
    "poison.guard": ("worker", "the poison guard on one real envelope: decode + "
                     "`envelope_problem` + `task_problem`"),
    "worker.begin": ("worker", "`Runtime._begin_execution`: `BEGIN_PUBLISH_LUA` (exactly-"
                     "once start, deliveries, lease, RUNNING event), awaited"),
    "worker.event": ("worker", "one event while running (`publisher.publish`: "
                     "PUBLISH_LUA, one pipeline)"),
    "worker.terminal": ("worker", "`Runtime._finish_with` (history on, fair release off): "
                        "`FINISH_PUBLISH_LUA`"),
    "worker.terminal_nohistory": ("worker", "the same with AIECS_HISTORY=0 (no meta, no "
                                  "outbox `XADD`)"),
    "worker.terminal_budgets": ("worker", "the same, budgets on: the reservation settled "
                                "in the terminal script"),
    "worker.release": ("worker", "`Runtime._release_next`: `RELEASE_LUA` after the "
                       "terminal step (no one held)"),
    "result.get": ("producer", "aiecs's `AsyncResult.get()` of a finished execution: "
                   "the one record read (`READ_LUA`), already there: no wait"),
    "runner.execute": ("worker", "the whole `Runtime.execute` of an echo no-op (parse, "
                       "begin, 2 events, terminal, release), awaited, no Celery"),
}


# -- the parent -----------------------------------------------------------------------------
def _counters(client: Any, pid: int) -> dict:
    info = client.info("all")  # one command, one read: subtracted below
    return {
        "commands": {k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items()
                     if k.startswith("cmdstat_")},
        "reads": info["total_reads_processed"],
        "cpu": info["used_cpu_user"] + info["used_cpu_sys"],
    }


def _delta(before: dict, after: dict, n: int) -> dict:
    was = before["commands"]
    by = {k: v - was.get(k, 0) for k, v in after["commands"].items() if v - was.get(k, 0)}
    by["info"] = by.get("info", 0) - 1
    by = {k: v for k, v in by.items() if v}
    return {
        "redis_us": 1e6 * (after["cpu"] - before["cpu"]) / n,
        "commands": sum(by.values()) / n,
        "round_trips": (after["reads"] - before["reads"] - 1) / n,
        "by_command": {k: round(v / n, 3) for k, v in sorted(by.items(), key=lambda kv: -kv[1])},
    }


class _Lines:
    """The child's stdout, line by line with a timeout (``procs.Child._line`` selects on
    the pipe, which misses a second line already read into its buffer: here the child
    often writes a result and its next ``ready`` at once)."""

    def __init__(self, child: procs.Child) -> None:
        self.child, self.fd, self.buf = child, child.proc.stdout.fileno(), b""

    def __call__(self, timeout: float) -> str:
        import selectors

        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            with selectors.DefaultSelector() as sel:
                sel.register(self.fd, selectors.EVENT_READ)
                if left <= 0 or not sel.select(left):
                    raise RuntimeError(f"child timed out:\n{self.child._tail()}")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise RuntimeError(f"child exited:\n{self.child._tail()}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode().strip()


_FIGURES = ("client_us", "redis_us", "wall_us", "commands", "round_trips")


def _median_row(rows: list[dict]) -> dict:
    """One part's rounds: the median of each figure, the rounds' own figures kept."""
    import statistics

    out = dict(rows[-1])
    for key in _FIGURES:
        out[key] = statistics.median(r[key] for r in rows)
    out["rounds"] = [{k: round(r[k], 2) for k in _FIGURES} for r in rows]
    return out


def measure(n: int, parts: list[str] | None = None, log=print, rounds: int = 1) -> dict:
    """Run the child against a fresh Redis; every part's figures per call (medians of
    ``rounds``)."""
    redis = Redis().start()
    client = redis.client
    env = base_env(CELERY_BROKER_URL=redis.url, REDIS_URL=redis.url, AIECS_PRICES=PRICES)
    child = procs.Child("bench.guarantees", {"child": True, "n": n, "parts": parts,
                                             "rounds": rounds}, env=env)
    out: dict[str, list[dict]] = {}
    lines = _Lines(child)
    try:
        while True:
            line = lines(900)
            if line == "done":
                break
            if not line.startswith("ready "):
                raise RuntimeError(f"child said {line!r}")
            name = line.split(" ", 1)[1]
            before = _counters(client, redis.proc.pid)
            child.go()
            res = json.loads(lines(900))
            after = _counters(client, redis.proc.pid)
            child.go("next")
            calls = res["n"]
            row = {"who": PARTS[name][0], "what": PARTS[name][1], "n": calls,
                   "client_us": 1e6 * res["cpu_s"] / calls,
                   "wall_us": 1e6 * res["wall_s"] / calls, **_delta(before, after, calls)}
            out.setdefault(name, []).append(row)
            log(f"  {name:28s} client {row['client_us']:7.1f} µs  redis {row['redis_us']:6.1f}"
                f" µs  commands {row['commands']:5.2f}  round trips {row['round_trips']:4.2f}")
        outbox = client.xlen("aiecs:outbox")
    finally:
        child.close()
    return {"parts": {k: _median_row(v) for k, v in out.items()}, "redis": redis,
            "outbox": outbox}


def recorder_part(redis: Redis, log=print, rows: int = 5000) -> dict:
    """An ``aiecs recorder`` (SQLite) draining the outbox entries the terminal parts
    appended: its CPU and Redis's per recorded row. The entries are taken out of the
    outbox while the recorder starts (its start-up, migrations and consumer group, is not
    measured), then put back as they were while it is stopped (SIGSTOP), and the recorder
    is let go. At most ``rows`` entries (the rest are dropped)."""
    import signal

    from .history import _count, _engine, _recorder

    client = redis.client
    entries = client.xrange("aiecs:outbox", count=rows)
    client.delete("aiecs:outbox")
    db = f"sqlite:///{tmpdir('guarantees')}/h.db"
    rec, _ = _recorder(db, redis.url)
    try:
        os.killpg(rec.pid, signal.SIGSTOP)
        with client.pipeline(transaction=False) as pipe:
            for _, fields in entries:
                pipe.xadd("aiecs:outbox", fields)
            pipe.execute()
        engine = _engine(db)
        rows0 = _count(engine)
        before, cpu0 = _counters(client, redis.proc.pid), procs.cpu_of([rec])
        os.killpg(rec.pid, signal.SIGCONT)
        deadline = time.monotonic() + 300
        while _count(engine) < rows0 + len(entries) and time.monotonic() < deadline:
            time.sleep(0.05)
        used, after = procs.cpu_of([rec]) - cpu0, _counters(client, redis.proc.pid)
        rows = _count(engine) - rows0
        engine.dispose()
    finally:
        stop(rec)
    if rows <= 0:
        raise RuntimeError("the recorder recorded nothing")
    row = {"who": "recorder", "what": "`aiecs recorder` (SQLite): one outbox entry read, "
           "written as a history row, acknowledged", "n": rows,
           "client_us": 1e6 * used / rows, "wall_us": None, **_delta(before, after, rows)}
    log(f"  {'recorder.row':28s} client {row['client_us']:7.1f} µs  redis "
        f"{row['redis_us']:6.1f} µs  commands {row['commands']:5.2f} ({rows} rows)")
    return row


def _diff(parts: dict, a: str, b: str) -> dict:
    """Part ``a`` − part ``b``: the median of the rounds' differences (the two were
    measured side by side in each round), or of the medians."""
    import statistics

    if a not in parts or b not in parts:
        return {}
    ra, rb = parts[a].get("rounds", []), parts[b].get("rounds", [])
    out = {}
    for key in ("client_us", "redis_us", "commands", "round_trips"):
        if ra and len(ra) == len(rb):
            out[key] = statistics.median(x[key] - y[key] for x, y in zip(ra, rb, strict=True))
        else:
            out[key] = parts[a][key] - parts[b][key]
    return out


def guarantees(parts: dict) -> list[dict]:
    """The guarantee rows, from the parts (a difference of two parts where a guarantee is
    one switch of a measured call)."""
    rows = []

    def add(name: str, buys: str, who: str, fig: dict, source: str) -> None:
        rows.append({"guarantee": name, "buys": buys, "who": who, "source": source,
                     **{k: fig.get(k, float("nan")) for k in
                        ("client_us", "redis_us", "commands", "round_trips")}})

    def part(name: str) -> dict:
        return parts.get(name, {})

    add("PENDING record + event + admission (`record_pending`)",
        "a resubmission is not queued twice; a lost message is swept back; the queued task "
        "is visible, numbered, replayable, live", "producer", part("pending.record"),
        "pending.record")
    add("of which: the PENDING event alone", "numbered, logged for replay, published live",
        "producer", part("pending.event"), "pending.event")
    add("of which: the admission call (fair window on)", "one user cannot fill the queue",
        "producer", part("admission.window"), "admission.window")
    add("fair-share window at submission (on − off)", "the per-user window counted",
        "producer", _diff(parts, "pending.record", "pending.record_nowindow"),
        "pending.record − pending.record_nowindow")
    add("quotas (`admit_one`)", "per-user rate, active and step limits (`submit()`, "
        "`POST /tasks`; not `.delay()`)", "producer", part("quotas.admit_one"),
        "quotas.admit_one")
    add("budgets on, user without budgets", "budgets checked", "producer",
        _diff(parts, "budgets.none", "budgets.off"), "budgets.none − budgets.off")
    add("budgets on, money + tokens budgets: reservation", "spend capped before the call",
        "producer", _diff(parts, "budgets.on", "budgets.off"), "budgets.on − budgets.off")
    add("budgets on: settlement at the terminal step", "what was used replaces the "
        "reservation", "worker", _diff(parts, "worker.terminal_budgets", "worker.terminal"),
        "worker.terminal_budgets − worker.terminal")
    add("poison guard (per message)", "a malformed message is dead-lettered, never "
        "crashes a worker", "worker", part("poison.guard"), "poison.guard")
    add("begin + RUNNING event", "exactly-once start, bounded redelivery, the lease, "
        "RUNNING in the log before the call", "worker", part("worker.begin"), "worker.begin")
    add("each event while running", "numbered, durable, live progress", "worker",
        part("worker.event"), "worker.event")
    add("terminal record + event (history on)", "one terminal state and event, atomically;"
        " retention; Celery's result published from the record; outbox", "worker",
        part("worker.terminal"), "worker.terminal")
    add("of which: the history outbox (on − off)", "every terminal state reaches the "
        "history", "worker", _diff(parts, "worker.terminal", "worker.terminal_nohistory"),
        "worker.terminal − worker.terminal_nohistory")
    add("fair-share release after the terminal step", "the user's next held execution "
        "sent", "worker", part("worker.release"), "worker.release")
    add("history recorder, per row", "the history row written (SQLite)", "recorder",
        part("recorder.row"), "recorder.row")
    add("Celery's message alone (reference)", "bare Celery `apply_async`, no result",
        "producer", part("celery.send"), "celery.send")
    add("Celery's send (reference)", "bare Celery `.delay()`", "producer",
        part("celery.delay"), "celery.delay")
    add("Celery's result store (reference)", "bare Celery `SETEX` + `PUBLISH`", "worker",
        part("celery.result"), "celery.result")
    add("the result read from the one record (`.get()`)", "`.get()` / `AsyncResult` "
        "without a second copy of the outcome", "producer", part("result.get"), "result.get")
    add("Celery's result read (reference)", "bare Celery `.get()`: `GET`", "producer",
        part("celery.get"), "celery.get")
    return rows


#: the guarantees a chat task pays (3 events: PENDING, RUNNING, COMPLETED), by source part
CHAT = ["pending.record", "poison.guard", "worker.begin", "worker.terminal",
        "worker.release", "recorder.row"]
#: a no-op echo task: the same and two events while running
NOOP = [*CHAT, "worker.event", "worker.event"]


def totals(parts: dict) -> dict:
    out = {}
    for name, names in (("chat", CHAT), ("noop", NOOP)):
        present = [p for p in names if p in parts]
        out[name] = {"parts": present, **{k: sum(parts[p][k] for p in present)
                     for k in ("client_us", "redis_us", "commands", "round_trips")}}
        out[name]["all_us"] = out[name]["client_us"] + out[name]["redis_us"]
    return out


def _fmt(v: float, digits: int = 1) -> str:
    return "–" if v != v else f"{v:,.{digits}f}"  # NaN: not measured


def table(result: dict) -> str:
    lines = [f"{result['n']} calls per part, medians of {result['rounds']} rounds; load "
             f"average {result['loadavg_before']} → {result['loadavg_after']}; "
             f"redis-server {result.get('redis_version')}", "",
             "| part | who pays | client µs | Redis µs | commands | round trips | by command |",
             "|---|---|---:|---:|---:|---:|---|"]
    for name, r in result["parts"].items():
        by = ", ".join(f"{k} {v:g}" for k, v in r["by_command"].items())
        lines.append(f"| `{name}` | {r['who']} | {_fmt(r['client_us'])} | "
                     f"{_fmt(r['redis_us'])} | {_fmt(r['commands'], 2)} | "
                     f"{_fmt(r['round_trips'], 2)} | {by} |")
    lines += ["", "| guarantee | who pays | client µs | Redis µs | commands | round trips |",
              "|---|---|---:|---:|---:|---:|"]
    for g in result["guarantees"]:
        lines.append(f"| {g['guarantee']} | {g['who']} | {_fmt(g['client_us'])} | "
                     f"{_fmt(g['redis_us'])} | {_fmt(g['commands'], 2)} | "
                     f"{_fmt(g['round_trips'], 2)} |")
    lines.append("")
    for name, t in result["totals"].items():
        lines.append(f"{name} task, guarantees summed ({' + '.join(t['parts'])}): client "
                     f"{t['client_us']:,.0f} µs + Redis {t['redis_us']:,.0f} µs = "
                     f"{t['all_us']:,.0f} µs; {t['commands']:.1f} commands, "
                     f"{t['round_trips']:.1f} round trips")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.guarantees",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="calls per part (default 5000)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="times the whole sequence runs; medians reported (default 3)")
    ap.add_argument("--out", type=Path, help="JSON out (default: "
                    "bench/results/guarantees-<date>.json)")
    ap.add_argument("--parts", default="", help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--no-recorder", action="store_true", help="skip the recorder's part")
    ap.add_argument("child", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(json.loads(args.child))
        return 0
    parts = [p.strip() for p in args.parts.split(",") if p.strip()] or None
    unknown = set(parts or ()) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts: {', '.join(sorted(unknown))}")
    procs.install_signal_handlers()

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    started = dt.datetime.now(dt.UTC)
    load0 = [round(x, 2) for x in os.getloadavg()]
    try:
        measured = measure(args.n, parts, log, args.rounds)
        redis = measured["redis"]
        version = redis.client.info("server")["redis_version"]
        if not args.no_recorder and measured["outbox"]:
            measured["parts"]["recorder.row"] = recorder_part(redis, log, args.n)
    finally:
        procs.cleanup()
    result = {"date": started.isoformat(timespec="seconds"), "n": args.n,
              "rounds": args.rounds,
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip(),
              "cpus": os.cpu_count(), "redis_version": version,
              "loadavg_before": load0,
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "parts": measured["parts"]}
    result["guarantees"] = guarantees(result["parts"])
    result["totals"] = totals(result["parts"])
    print(table(result), flush=True)
    path = args.out or ROOT / "bench" / "results" / f"guarantees-{started:%Y-%m-%d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    log(f"wrote {path}")
    return 0


# -- the child: the real calls ----------------------------------------------------------------
def _configure(**env: str | None) -> None:
    """Set (or, with None, unset) settings and read them again (``get_settings`` is
    cached per process)."""
    from aiecs_worker.settings import get_settings

    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


def _kwargs(tag: str, i: int, chat: bool = False, n: int = 0) -> dict:
    user = f"{tag}u{i % max(USERS, n // PER_USER)}"
    if chat:
        return {"user_id": user, "task_id": f"{tag}{i}", "step": 1, "context": {},
                "mode": "llm", "service": "openai", "task_name": "chat",
                "input_data": CHAT_INPUT}
    return {"user_id": user, "task_id": f"{tag}{i}", "step": 1, "context": {},
            "mode": "test", "service": "echo", "task_name": "echo", "input_data": NOOP_INPUT}


def _child(cfg: dict) -> None:
    from aiecs_core import TaskRequest, TaskResult, TaskStatus
    from aiecs_worker import execute_task
    from aiecs_worker.runner import poison
    from aiecs_worker.runner.context import WorkerContext
    from aiecs_worker.runner.runtime import Runtime
    from aiecs_worker.settings import get_settings
    from aiecs_worker.store import admission
    from aiecs_worker.store.events import TaskKeys, celery_task_id, publish_sync
    from aiecs_worker.store.hold import ADMIT_LUA, admit_args
    from aiecs_worker.store.records import record_pending, state_redis
    from aiecs_worker.store.scripts import pipelined
    from kombu.utils.json import loads as kombu_loads

    from . import anchor_app

    n = cfg["n"]
    wanted = set(cfg.get("parts") or PARTS)
    task_name, queue = execute_task.name, "fast_tasks"
    client = state_redis()
    rt = Runtime()
    time.sleep(0.5)  # its first lease renewal and sweep, then nothing but what is measured
    rt._lease_keeper.cancel()
    rt._cancel_listener.cancel()
    time.sleep(0.2)

    def on_loop(coro) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, rt.loop).result()

    def requests(tag: str, chat: bool = False) -> list[TaskRequest]:
        return [TaskRequest.model_validate(_kwargs(tag, i, chat, n)) for i in range(n)]

    def record(reqs: list[TaskRequest]) -> None:
        for r in reqs:
            record_pending(r, celery_task_id(r.user_id, r.task_id, r.step), queue=queue,
                           task=task_name)

    def contexts(reqs: list[TaskRequest]) -> list[WorkerContext]:
        return [WorkerContext(r, rt, deadline=time.monotonic() + 3600, queue=queue)
                for r in reqs]

    async def begin_all(ctxs: list[WorkerContext]) -> None:
        for ctx in ctxs:
            r = ctx.request
            await rt._begin_execution(ctx, TaskKeys(r.user_id, r.task_id),
                                      celery_task_id(r.user_id, r.task_id, r.step),
                                      task_name, queue)

    def outcome(ctx: WorkerContext) -> dict:
        r = ctx.request
        now = time.time()
        return TaskResult(task_id=r.task_id, step=r.step, user_id=r.user_id,
                          task_name=r.task_name, mode=r.mode, service=r.service,
                          status=TaskStatus.COMPLETED, result={"text": "hello world"},
                          usage=ctx.usage, attempts=1, started_at=now,
                          finished_at=now).model_dump(mode="json")

    async def finish_all(ctxs: list[WorkerContext], results: list[dict]) -> None:
        for ctx, res in zip(ctxs, results, strict=True):
            r = ctx.request
            await rt._finish_with(ctx, TaskStatus.COMPLETED, result=res,
                                  celery_id=celery_task_id(r.user_id, r.task_id, r.step))

    def no_release() -> None:
        """The runtime's settings without fair windows: ``_finish_with`` then skips
        ``_release_next`` (the record's window is still left by the terminal script)."""
        rt.settings = get_settings().model_copy(update={"aiecs_fair_window_fast": 0,
                                                        "aiecs_fair_window_heavy": 0})

    def timed(name: str, run, calls: int = n) -> None:
        if name not in wanted:
            return
        print(f"ready {name}", flush=True)
        sys.stdin.readline()
        c0, w0 = time.process_time(), time.perf_counter()
        run()
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        print(json.dumps({"n": calls, "cpu_s": cpu, "wall_s": wall}), flush=True)
        sys.stdin.readline()  # nothing more until the parent has read Redis's counters

    # warm-up: every script loaded, every client connected, every module imported
    warm = [execute_task.delay(**_kwargs("warm", i)) for i in range(4)]
    [anchor_app.noop.delay(i=i) for i in range(4)]
    anchor_app.app.backend.store_result("warm", {"ok": True}, "SUCCESS")
    wctx = contexts([TaskRequest.model_validate(_kwargs("warm", i)) for i in range(4)])
    on_loop(begin_all(wctx))
    on_loop(rt.publisher.publish(wctx[0].make_event("progress", message="warm")))
    on_loop(finish_all(wctx, [outcome(c) for c in wctx]))
    on_loop(rt._release_next(TaskKeys(wctx[0].request.user_id, "warm0").state(1)))
    for c in wctx:  # the result read's script loaded, the result consumer started
        r = c.request
        execute_task.AsyncResult(celery_task_id(r.user_id, r.task_id, r.step)).get(timeout=10)
    anchor_app.app.AsyncResult("warm").get(timeout=10)
    publish_sync(client, wctx[0].make_event("progress"), "socketio", 10_000, 86_400)
    del warm

    def one_round(rnd: int) -> None:
        """Every part once, on executions of this round's own."""

        def tg(tag: str) -> str:
            return f"{tag}{rnd}-"

        # -- Celery alone (references) ---------------------------------------------------------
        def celery_send() -> None:
            for i in range(n):
                anchor_app.noop.apply_async(kwargs=_kwargs(tg("s"), i, n=n),
                                            ignore_result=True)
        timed("celery.send", celery_send)

        def celery_delay() -> None:
            for i in range(n):
                anchor_app.noop.delay(**_kwargs(tg("c"), i, n=n))
        timed("celery.delay", celery_delay)

        def celery_result() -> None:
            backend = anchor_app.app.backend
            for i in range(n):
                backend.store_result(f"cr{rnd}-{i}", {"ok": True}, "SUCCESS")
        timed("celery.result", celery_result)

        def celery_get() -> None:
            app = anchor_app.app
            for i in range(n):
                app.AsyncResult(f"cr{rnd}-{i}").get(timeout=10)
        if "celery.result" not in wanted and "celery.get" in wanted:
            celery_result()
        timed("celery.get", celery_get)

        # -- the producer ------------------------------------------------------------------------
        def aiecs_delay() -> None:
            for i in range(n):
                execute_task.delay(**_kwargs(tg("d"), i, n=n))
        timed("aiecs.delay", aiecs_delay)

        reqs_r = requests(tg("r"))
        timed("pending.record", lambda: record(reqs_r))
        reqs_r0 = requests(tg("r0"))
        _configure(AIECS_FAIR_WINDOW_FAST="0", AIECS_FAIR_WINDOW_HEAVY="0")
        if "admission.window" in wanted and "pending.record_nowindow" not in wanted:
            record(reqs_r0)  # what the admission part admits
        timed("pending.record_nowindow", lambda: record(reqs_r0))
        _configure(AIECS_FAIR_WINDOW_FAST=None, AIECS_FAIR_WINDOW_HEAVY=None)

        def events_alone() -> None:
            s = get_settings()
            for ev in evs:
                publish_sync(client, ev, s.aiecs_socketio_channel, s.aiecs_events_maxlen,
                             s.aiecs_events_ttl)
        if "pending.event" in wanted:
            if "pending.record" not in wanted:
                record(reqs_r)
            evs = [c.make_event("status", status=TaskStatus.PENDING, message="queued")
                   for c in contexts(reqs_r)]
        timed("pending.event", events_alone)

        def admit_alone() -> None:
            s = get_settings()
            for r in reqs_r0:  # recorded without a window: admitted here for the first time
                state_key = TaskKeys(r.user_id, r.task_id).state(r.step)
                a_keys, a_args = admit_args(s, state_key, r.user_id, queue, None)
                pipelined(client, [(ADMIT_LUA, len(a_keys), *a_keys, *a_args)])
        timed("admission.window", admit_alone)

        admission.admit_one(TaskRequest.model_validate(_kwargs(tg("warmq"), 0)),
                            client=client)

        def quotas_alone() -> None:
            for r in reqs_r:
                admission.admit_one(r, client=client)
        timed("quotas.admit_one", quotas_alone)

        def send_held(reqs: list[TaskRequest]) -> None:
            for r in reqs:  # what apply_async does before its Celery send
                hold = admission.hold_sent(r)
                record_pending(r, celery_task_id(r.user_id, r.task_id, r.step), queue=queue,
                               task=task_name, hold=hold)
                if hold is not None:
                    admission.warn(client, hold.reserved, r.user_id, r.task_id, r.step,
                                   r.task_name)
        reqs_b0, reqs_bn = requests(tg("b0"), True), requests(tg("bn"), True)
        reqs_b = requests(tg("b"), True)
        timed("budgets.off", lambda: send_held(reqs_b0))
        _configure(AIECS_BUDGETS="[]")
        # the script loaded before the timed loop
        send_held([TaskRequest.model_validate(_kwargs(tg("warmbn"), 0, True))])
        timed("budgets.none", lambda: send_held(reqs_bn))
        _configure(AIECS_BUDGETS=BUDGETS)
        send_held([TaskRequest.model_validate(_kwargs(tg("warmbo"), 0, True))])
        if "worker.terminal_budgets" in wanted and "budgets.on" not in wanted:
            send_held(reqs_b)
        timed("budgets.on", lambda: send_held(reqs_b))
        _configure(AIECS_BUDGETS=None)

        # -- the worker ---------------------------------------------------------------------------
        execute_task.delay(**_kwargs(tg("env"), 0))  # a real envelope, from its queue
        raw = next(filter(None, (client.rpop(k) for k in client.scan_iter(f"{queue}*")
                                 if client.type(k) == b"list")))
        payload = kombu_loads(raw.decode())
        with anchor_app.app.connection_for_read() as conn:
            channel = conn.default_channel
            message = channel.Message(payload, channel=channel)
            tasks = execute_task.app.tasks

            def guard() -> None:
                text = raw.decode()
                for _ in range(n):
                    poison.envelope_problem(kombu_loads(text))
                    poison.task_problem(message, tasks)
            if poison.envelope_problem(payload) is not None or poison.task_problem(message, tasks):
                raise RuntimeError("the envelope does not pass the guard")
            timed("poison.guard", guard)

        worker_parts = {"worker.begin", "worker.event", "worker.terminal", "worker.release",
                    "result.get",
                        "worker.terminal_nohistory", "worker.terminal_budgets"}
        if worker_parts & wanted:
            if "aiecs.delay" not in wanted:
                for i in range(n):
                    execute_task.delay(**_kwargs(tg("d"), i, n=n))
            ctx_d = contexts(requests(tg("d")))
            timed("worker.begin", lambda: on_loop(begin_all(ctx_d)))
            if "worker.begin" not in wanted:
                on_loop(begin_all(ctx_d))
            evs = [c.make_event("progress", message="working", progress=0.5) for c in ctx_d]

            async def publish_all() -> None:
                for ev in evs:
                    await rt.publisher.publish(ev)
            timed("worker.event", lambda: on_loop(publish_all()))

            no_release()
            res_d = [outcome(c) for c in ctx_d]
            timed("worker.terminal", lambda: on_loop(finish_all(ctx_d, res_d)))
            if "worker.terminal" not in wanted:
                on_loop(finish_all(ctx_d, res_d))
            rt.settings = get_settings()

            async def release_all() -> None:
                for c in ctx_d:
                    r = c.request
                    await rt._release_next(TaskKeys(r.user_id, r.task_id).state(r.step))
            timed("worker.release", lambda: on_loop(release_all()))

            def results_get() -> None:
                for c in ctx_d:
                    r = c.request
                    execute_task.AsyncResult(
                        celery_task_id(r.user_id, r.task_id, r.step)).get(timeout=10)
            timed("result.get", results_get)

            if "worker.terminal_nohistory" in wanted:
                reqs_h = requests(tg("h"))
                for i in range(n):
                    execute_task.delay(**_kwargs(tg("h"), i, n=n))
                ctx_h = contexts(reqs_h)
                on_loop(begin_all(ctx_h))
                res_h = [outcome(c) for c in ctx_h]
                _configure(AIECS_HISTORY="0")
                no_release()
                timed("worker.terminal_nohistory", lambda: on_loop(finish_all(ctx_h, res_h)))
                _configure(AIECS_HISTORY=None)
                rt.settings = get_settings()

            if "worker.terminal_budgets" in wanted:
                _configure(AIECS_BUDGETS=BUDGETS)
                ctx_b = contexts(reqs_b)
                on_loop(begin_all(ctx_b))
                res_b = [outcome(c) for c in ctx_b]
                no_release()
                timed("worker.terminal_budgets", lambda: on_loop(finish_all(ctx_b, res_b)))
                _configure(AIECS_BUDGETS=None)
                rt.settings = get_settings()

        if "runner.execute" in wanted:
            calls = [_kwargs(tg("x"), i, n=n) for i in range(n)]
            for kw in calls:
                execute_task.delay(**kw)

            async def execute_all() -> None:
                for kw in calls:
                    await rt.execute((), kw, celery_id=celery_task_id(kw["user_id"],
                                                                        kw["task_id"], 1),
                                     task=task_name, queue=queue)
            timed("runner.execute", lambda: on_loop(execute_all()))
    for rnd in range(cfg.get("rounds", 1)):
        one_round(rnd)
    print("done", flush=True)
    os._exit(0)  # the runtime's loop thread and Celery's result consumer: no teardown


if __name__ == "__main__":
    sys.exit(main())
