"""The aiecs benchmark: every scenario of issue 8, aiecs against its anchor.

    uv run python -m bench                       # full run: bench/REPORT.md, bench/results/
    uv run python -m bench --quick               # < 4 min: bench/results/quick/
    uv run python -m bench --scenarios noop,chat --repeats 5

Every run starts its own redis-server, workers, servers and clients, and alternates aiecs
and anchor runs (aiecs first on even repeats, anchor first on odd ones); tables show the
median over repeats. Everything started is stopped on exit, error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import procs, progress, report, startup, submission, throughput

#: The README's recommended deployment of the fast queue (section "Worker pools"): two
#: asyncio-pool workers (aiecs worker -p 2), concurrency 200. Override with --recommended.
RECOMMENDED = {"processes": 2, "pool": "asyncio", "concurrency": 200}

FULL = {
    "repeats": 3, "noop_tasks": 2000, "noop_pools": ["threads", "prefork", "asyncio"],
    "scaling": [1, 2, 4], "chat_tasks": 3000,
    "chat_anchor_tasks": 60, "sockets": 500, "progress_rate": 100, "progress_seconds": 20,
    "events_per_task": 5, "streams": 50, "stream_tokens": 100, "stream_interval": 0.02,
    "startup_repeats": 5, "imports": 7, "batch_tasks": 10_000, "submit_tasks": 5000,
    "tracing_tasks": 2000, "allin_tasks": 2000,
}
# events_per_task: what the plain python-socketio anchor emits per task, as many as an aiecs
# echo no-op makes (PENDING, RUNNING, progress, stream, COMPLETED).
QUICK = {
    **FULL, "repeats": 1, "noop_tasks": 300, "scaling": [1, 4], "chat_tasks": 500,
    "chat_anchor_tasks": 16, "progress_seconds": 5,
    "stream_tokens": 40, "startup_repeats": 1, "imports": 3, "batch_tasks": 300,
    "submit_tasks": 1000, "tracing_tasks": 500, "allin_tasks": 500,
}
#: For the test suite's smoke test: seconds, one scenario, only to keep the harness working.
SMOKE = {**QUICK, "noop_tasks": 20, "noop_pools": ["threads"], "tracing_tasks": 20,
         "allin_tasks": 20}

SCENARIOS = ["noop", "chat", "progress", "startup", "streaming", "scaling", "events",
             "batch", "tracing", "submit", "allin"]


def _compile_workspace(log) -> None:
    """Compile the workspace packages' bytecode, as a deployment has it (the Docker image
    installs them non-editable with UV_COMPILE_BYTECODE). In this editable checkout, with
    PYTHONDONTWRITEBYTECODE set, every worker and server the bench starts would otherwise
    compile aiecs's modules from source: about 32 ms more per process start, measured."""
    root = Path(__file__).resolve().parent.parent
    sources = [str(p) for p in sorted((root / "packages").glob("*/src"))]
    done = subprocess.run([sys.executable, "-m", "compileall", "-q", *sources],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        log(f"compileall failed (start-up figures include compiling): {done.stderr[-500:]}")


def _median(runs: list[dict]) -> dict:
    keys = {k for r in runs for k, v in r.items() if isinstance(v, int | float)}
    return {k: statistics.median(v for r in runs if isinstance(v := r.get(k), int | float))
            for k in sorted(keys)}


def make_alternate(repeats: int, log):
    def alternate(variants: dict, repeats: int = repeats) -> dict:
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for r in range(repeats):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                t0 = time.monotonic()
                result = variants[name]()
                runs[name].append(result)
                log(f"    {name:6s} run {r + 1}/{repeats} ({time.monotonic() - t0:4.1f} s): "
                    + ", ".join(f"{k}={v:.3g}" for k, v in result.items()
                                if isinstance(v, float)))
        return {"runs": runs, "median": {name: _median(rs) for name, rs in runs.items()}}

    return alternate


def _machine() -> dict:
    load = os.getloadavg()
    try:
        redis = subprocess.run(["redis-server", "--version"], capture_output=True,
                               text=True).stdout.split()[2]
    except (OSError, IndexError):
        redis = None
    return {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "redis": redis, "loadavg_at_start": load}


def _git() -> str | None:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=procs.ROOT)
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[1])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, one repeat (< 4 min)")
    mode.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--repeats", type=int, help="runs of each variant (median reported)")
    parser.add_argument("--recommended", default=None, metavar="processes=1,concurrency=200",
                        help="the recommended deployment measured in the chat scenario")
    parser.add_argument("--chat-also", default="", metavar="threads",
                        help="chat: the recommended deployment also with these pools "
                             "(comma-separated), alternated in the same run")
    parser.add_argument("--noop-pools", default=None, metavar="asyncio",
                        help="noop: only these of threads,prefork,asyncio (comma-separated)")
    parser.add_argument("--aiecs-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every aiecs process (workers, producer, "
                             "recorder), not the anchors' (repeatable): an ablation, e.g. "
                             "AIECS_HISTORY=0")
    parser.add_argument("--out", type=Path, help="directory of REPORT.md and results/")
    parser.add_argument("--shared", action="store_true",
                        help="say in the report that the machine was shared during the run")
    args = parser.parse_args(argv)

    params = dict(SMOKE if args.smoke else QUICK if args.quick else FULL)
    if args.repeats:
        params["repeats"] = args.repeats
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    recommended = dict(RECOMMENDED)
    for item in filter(None, (args.recommended or "").split(",")):
        key, _, value = item.partition("=")
        recommended[key.strip()] = value.strip() if key.strip() == "pool" else int(value)
    also = [p.strip() for p in args.chat_also.split(",") if p.strip()]
    if also:
        recommended["also"] = also
    if args.noop_pools:
        params["noop_pools"] = [p.strip() for p in args.noop_pools.split(",") if p.strip()]
    for item in args.aiecs_env:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--aiecs-env wants KEY=VALUE, not {item!r}")
        throughput.AIECS_ENV[key.strip()] = value
    if throughput.AIECS_ENV:
        params["aiecs_env"] = dict(throughput.AIECS_ENV)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    out = args.out or (procs.ROOT / "bench" if mode_name == "full"
                       else procs.ROOT / "bench" / "results" / mode_name)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    alternate = make_alternate(params["repeats"], log)
    runners = {
        "noop": lambda: throughput.noop(params, alternate),
        "chat": lambda: throughput.chat(params, alternate, recommended),
        "progress": lambda: progress.progress(params, alternate),
        "startup": lambda: startup.startup(params, alternate),
        "streaming": lambda: progress.streaming(params, alternate),
        "scaling": lambda: throughput.scaling(params, alternate),
        "events": lambda: throughput.events(params, alternate),
        "batch": lambda: throughput.batch(params, alternate),
        "tracing": lambda: throughput.tracing(params, alternate),
        "submit": lambda: submission.submit(params, alternate),
        "allin": lambda: throughput.allin(params, alternate),
    }
    started = dt.datetime.now(dt.UTC)
    results = {"date": started.isoformat(timespec="seconds"), "mode": mode_name,
               "commit": _git(), "machine": _machine(), "shared": args.shared,
               "params": params, "recommended": recommended, "scenarios": {}}
    procs.install_signal_handlers()
    _compile_workspace(log)
    t0 = time.monotonic()
    try:
        for name in (s for s in SCENARIOS if s in chosen):
            log(f"== {name}")
            try:
                results["scenarios"][name] = runners[name]()
            except Exception as exc:  # noqa: BLE001 - reported; the other scenarios still run
                log(f"   {name} failed: {exc}")
                results.setdefault("errors", {})[name] = str(exc)[-2000:]
            procs.cleanup()
    except KeyboardInterrupt:
        log("interrupted: stopping everything the bench started")
        return 130
    finally:
        procs.cleanup()
    results["seconds"] = round(time.monotonic() - t0, 1)
    (out / "results").mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y-%m-%dT%H%M")
    path = out / "results" / f"bench-{stamp}-{mode_name}.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    report_path = report.write(results, out, path)
    log(f"done in {results['seconds']} s: {report_path} and {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
