"""Where a chat task's CPU goes: py-spy on the workers and producer of a chat drain, aiecs
against arq (and bare Celery on gevent with ``--gevent``), samples sorted into components.

    uv run python -m bench.profile                      # 3,000 tasks each, ~3 min quiet
    uv run python -m bench.profile --tasks 1000 --out bench/results/profile

Each variant runs one chat drain (bench/throughput.py's ``drain``, the chat scenario's
deployment) with py-spy (``record --gil --subprocesses``) attached to every worker and the
producer over the measured span. Only shares are trusted: each component's µs per task is
its share of the working samples times the process's CPU per task from /proc. (On this
machine py-spy's idle detection did not work: without ``--gil`` every blocked thread was
sampled, 26 ms per task for a worker using 6; with ``--gil`` a many-threaded worker's
samples matched its CPU, 8.5 against 7.6 ms, but a single-threaded process, arq's worker
or a producer, was sampled whenever it had last held the GIL, idle or not: 13.6 against
3.7 ms. Frames where a thread waits, ``WAITING``, are counted apart.) Each sample is given
to the innermost frame that names a
component (``COMPONENTS``; redis-py, json, pydantic and the standard library are never a
component: their time goes to the caller that asked for them). The result, µs per task by
component and process, lands in ``<out>/profile.json`` and ``<out>/profile.md``; the
collapsed stacks (``<variant>/<process>.txt``) open in speedscope or flamegraph.pl.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from . import procs, throughput
from .run import RECOMMENDED

#: (substring of a frame's file path, component), checked in order on each frame from the
#: innermost out; the first frame that matches names the sample's component.
COMPONENTS = [
    ("/logging/", "logging"),
    ("aiecs_openai_compat", "SDK call (openai SDK, HTTP client, parsing)"),
    ("/openai/", "SDK call (openai SDK, HTTP client, parsing)"),
    ("/aiohttp/", "SDK call (openai SDK, HTTP client, parsing)"),
    ("/httpx2/", "SDK call (openai SDK, HTTP client, parsing)"),
    ("/httpcore", "SDK call (openai SDK, HTTP client, parsing)"),
    ("/anyio/", "anyio (to_thread: the server's hop to a thread)"),
    ("aiecs_worker/store/events", "aiecs event publishing"),
    ("aiecs_worker/store/", "aiecs state transitions (begin/finish Lua, records, lease)"),
    ("aiecs_worker/runner/runtime", "aiecs runtime: thread → loop hop, loop"),
    ("aiecs_worker/runner/", "aiecs task wrapper (runner)"),
    ("aiecs_worker/producer/", "aiecs submission (producer)"),
    ("aiecs_worker/ops/", "aiecs ops (metrics, redaction, logs)"),
    ("aiecs_worker/server/", "aiecs HTTP API (routes, auth, body)"),
    ("aiecs_worker/", "aiecs other"),
    ("aiecs_core", "aiecs core (models, registry)"),
    ("/celery/backends/", "Celery result backend"),
    ("/celery/", "Celery / kombu message handling"),
    ("/kombu/", "Celery / kombu message handling"),
    ("/billiard/", "Celery / kombu message handling"),
    ("/arq/", "arq"),
    ("/gevent/", "gevent hub and greenlets"),
    ("/starlette/", "ASGI server (uvicorn, starlette)"),
    ("/uvicorn/", "ASGI server (uvicorn, starlette)"),
    ("/h11/", "ASGI server (uvicorn, starlette)"),
    ("/httptools/", "ASGI server (uvicorn, starlette)"),
    ("/socketio/", "Socket.IO server"),
    ("/engineio/", "Socket.IO server"),
]
#: the innermost frame of no component above: the loop or the thread machinery
FALLBACK = [("/asyncio/", "event loop (asyncio/uvloop)"), ("uvloop", "event loop (asyncio/uvloop)"),
            ("/threading.py", "threads, futures"), ("/concurrent/", "threads, futures"),
            ("/redis/", "redis-py (no caller known)"),
            ("/bench/", "bench harness (producer loop)")]
#: innermost frames where a sampled thread waits rather than works (a loop's poll, a
#: thread's queue): counted apart, as "waiting", and left out of the shares
WAITING = ("Worker.run (arq/worker.py", "_epoll.poll (kombu/", "Condition.wait (threading.py",
           "_worker (concurrent/futures/thread.py", "Hub.run (gevent/", "poll.poll (gevent/",
           "Runtime._run_loop (aiecs_worker/runner/runtime.py", "run_forever (asyncio/",
           "_run_once (asyncio/base_events.py", "select (selectors.py", "poll (selectors.py",
           "acquire_with_timeout (gevent/", "Event.wait (threading.py")
_FRAME = re.compile(r"\((?P<path>[^:()]*)(?::\d+)?\)$")


def component(stack: list[str]) -> str:
    # py-spy names site-packages files from the package down ("celery/app/trace.py")
    paths = ["/" + (m.group("path") if (m := _FRAME.search(f)) else f) for f in stack]
    for rules in (COMPONENTS, FALLBACK):
        for path in reversed(paths):
            for needle, name in rules:
                if needle in path:
                    return name
    return "other"


def collapse(path: Path) -> tuple[Counter, Counter]:
    """(samples by component, samples by innermost frame) of a py-spy raw file."""
    by_component: Counter = Counter()
    by_leaf: Counter = Counter()
    if not path.exists():
        return by_component, by_leaf
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        waiting = bool(frames) and frames[-1].startswith(WAITING)
        by_component["(waiting)" if waiting else component(frames)] += int(count)
        by_leaf[frames[-1] if frames else "?"] += int(count)
    return by_component, by_leaf


def _scaled(comp: Counter, cpu_us: float | None) -> dict[str, float]:
    """Each component's share of the working samples (waiting ones left out) times the
    process's CPU per task from /proc: py-spy's ``--gil`` samples a single-threaded process
    whenever it last held the GIL, idle or not, so only shares are trusted."""
    working = {k: v for k, v in comp.items() if k != "(waiting)"}
    total = sum(working.values())
    if not total or cpu_us is None:
        return {}
    return {k: cpu_us * v / total for k, v in sorted(working.items(), key=lambda kv: -kv[1])}


def summarize(folder: Path, n: int, rate: int, cpu_us: dict | None = None) -> dict:
    """``cpu_us``: /proc CPU µs per task by role (``workers``, ``producer``)."""
    out: dict[str, dict] = {}
    for role in ("workers", "producer"):
        files = sorted(folder.glob("worker*.txt")) if role == "workers" else [
            folder / "producer.txt"]
        comp, leaf = Counter(), Counter()
        for f in files:
            c, lf = collapse(f)
            comp.update(c)
            leaf.update(lf)
        us = 1e6 / rate / n
        out[role] = {"sampled_us": sum(comp.values()) * us,
                     "samples": dict(comp.most_common()),
                     "components": _scaled(comp, (cpu_us or {}).get(role)),
                     "top_frames": {k: v * us for k, v in leaf.most_common(25)}}
    return out


def _waiting(samples: dict) -> float:
    total = sum(samples.values())
    return samples.get("(waiting)", 0) / total if total else 0.0


def markdown(result: dict) -> str:
    variants = list(result["variants"])
    lines = [f"Chat drain, {result['tasks']} tasks per variant, py-spy {result['rate']} Hz "
             "(`--gil`): each component's share of the working samples × the process's "
             "CPU per task from /proc, µs per task.", ""]
    for role in ("workers", "producer"):
        comps = sorted({c for v in variants for c in result["variants"][v][role]["components"]},
                       key=lambda c: -max(result["variants"][v][role]["components"].get(c, 0)
                                          for v in variants))
        lines += [f"### {role}", "", f"| component | {' | '.join(variants)} |",
                  "|---|" + "---:|" * len(variants)]
        for c in comps:
            lines.append(f"| {c} | " + " | ".join(
                f"{result['variants'][v][role]['components'].get(c, 0):.0f}" for v in variants)
                + " |")
        key = "worker_cpu_ms" if role == "workers" else "client_cpu_ms"
        lines.append("| **CPU from /proc (with sampling's cost)** | " + " | ".join(
            f"**{1000 * result['variants'][v]['drain'][key]:.0f}**" for v in variants) + " |")
        lines.append("| (py-spy: samples × period; waiting share) | " + " | ".join(
            "{:.0f}; {:.0%}".format(result['variants'][v][role]['sampled_us'], _waiting(
                result['variants'][v][role]['samples'])) for v in variants) + " |")
        lines.append("")
    sub = result.get("submit") or {}
    if sub:
        names = list(sub)
        comps = sorted({c for v in names for c in sub[v]["components"]},
                       key=lambda c: -max(sub[v]["components"].get(c, 0) for v in names))
        lines += ["### submitter (the server for POST /tasks), per submission", "",
                  f"| component | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
        for c in comps:
            lines.append(f"| {c} | " + " | ".join(
                f"{sub[v]['components'].get(c, 0):.0f}" for v in names) + " |")
        lines.append("| **CPU from /proc (with sampling's cost)** | " + " | ".join(
            f"**{sub[v]['run']['submitter_cpu_us']:.0f}**" for v in names) + " |")
        lines.append("| (py-spy: samples × period; waiting share) | " + " | ".join(
            f"{sub[v]['sampled_us']:.0f}; {_waiting(sub[v]['samples']):.0%}" for v in names)
            + " |")
        lines.append("")
    for v in variants:
        d = result["variants"][v]["drain"]
        lines += [f"{v}: {d['per_s']:.0f} tasks/s, Redis commands per task "
                  f"{d['commands']:.1f} (round trips {d['round_trips']:.1f}): "
                  + ", ".join(f"`{k}` {x:g}" for k, x in d["by_command"].items()), ""]
    return "\n".join(lines) + "\n"


def resort(folder: Path) -> dict:
    """Sort an earlier run's stacks again (after a change of ``COMPONENTS``)."""
    result = json.loads((folder / "profile.json").read_text())
    folders = {"aiecs": "aiecs", "arq": "arq", "celery gevent": "celery-gevent"}
    for name, v in result["variants"].items():
        d = v["drain"]
        cpu = {"workers": 1000 * d["worker_cpu_ms"], "producer": 1000 * d["client_cpu_ms"]}
        v.update(summarize(folder / folders[name], result["tasks"], result["rate"], cpu))
    for variant, v in (result.get("submit") or {}).items():
        comp, _ = collapse(folder / ("submit-" + re.sub(r"[^a-z]+", "-", variant.lower()))
                           / "submitter.txt")
        v["samples"] = dict(comp.most_common())
        v["components"] = _scaled(comp, v["run"]["submitter_cpu_us"])
    (folder / "profile.json").write_text(json.dumps(result, indent=1) + "\n")
    (folder / "profile.md").write_text(markdown(result))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--gevent", action="store_true", help="profile bare Celery gevent too")
    parser.add_argument("--pool", default=RECOMMENDED["pool"],
                        help="aiecs's worker pool (threads, the recommended; asyncio)")
    parser.add_argument("--no-arq", action="store_true", help="profile aiecs only")
    parser.add_argument("--submit", type=int, default=3000, metavar="N",
                        help="then profile N submissions through .delay(), POST /tasks and "
                             "arq's enqueue_job (0: skip)")
    parser.add_argument("--out", type=Path, default=procs.ROOT / "bench" / "results" / "profile")
    parser.add_argument("--resort", action="store_true",
                        help="only sort the stacks of an earlier run in --out again")
    args = parser.parse_args(argv)
    if args.resort:
        result = resort(args.out)
        print(markdown(result))
        return 0
    procs.install_signal_handlers()
    params = {"chat_tasks": args.tasks}
    runs = throughput.chat_variants(params, {**RECOMMENDED, "pool": args.pool},
                                    profile=args.out)
    names = ["aiecs"] + ([] if args.no_arq else ["arq"]) + (
        ["celery gevent"] if args.gevent else [])
    folders = {"aiecs": "aiecs", "arq": "arq", "celery gevent": "celery-gevent"}
    result = {"tasks": args.tasks, "rate": args.rate, "variants": {}}
    throughput.PROFILE_RATE = args.rate
    try:
        for name in names:
            drained = runs[name]()
            cpu = {"workers": 1000 * drained["worker_cpu_ms"],
                   "producer": 1000 * drained["client_cpu_ms"]}
            result["variants"][name] = {"drain": drained,
                                        **summarize(args.out / folders[name], args.tasks,
                                                    args.rate, cpu)}
        if args.submit:
            from . import submission

            result["submit"] = {}
            for variant in submission.VARIANTS:
                folder = args.out / ("submit-" + re.sub(r"[^a-z]+", "-", variant.lower()))
                ran = submission.submit_once(variant, args.submit, profile=folder)
                comp, leaf = collapse(folder / "submitter.txt")
                us = 1e6 / args.rate / args.submit
                result["submit"][variant] = {
                    "run": ran, "sampled_us": sum(comp.values()) * us,
                    "samples": dict(comp.most_common()),
                    "components": _scaled(comp, ran["submitter_cpu_us"]),
                    "top_frames": {k: v * us for k, v in leaf.most_common(25)}}
    finally:
        procs.cleanup()
    (args.out / "profile.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "profile.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
