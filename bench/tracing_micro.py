"""The CPU that tracing adds per task, measured on the hooks alone (a focused micro-run;
the ``tracing`` scenario of ``python -m bench`` measures the whole chat drain).

    uv run python -m bench.tracing_micro [--tasks 20000]

In one process, per simulated task: the publish hook (``send`` span, ``traceparent``
into the headers), the worker's execution span around a provider call span (with usage,
its two GenAI histograms) and the terminal event: every hook aiecs calls for one chat.
Off, then on with every span exported over OTLP/HTTP to a local receiver (in another
process: its CPU is not counted). CPU is ``time.process_time()`` of this process, the
exporter's and batch processor's threads included, up to the last span exported
(``force_flush``); the same loop with tracing off is subtracted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

SINK = """
import sys
from bench.otlp_sink import Sink
s = Sink(); print(s.endpoint, flush=True); sys.stdin.read()
print(s.spans, flush=True)
"""


class _Request:
    def __init__(self, headers: dict, task_id: str) -> None:
        self.__dict__.update(headers)
        self.id = headers["id"]
        self.kwargs = {"task_name": "chat", "mode": "llm", "service": "openai",
                       "task_id": task_id, "step": 1}


class _Service:
    provider = "openai"


class _Data:
    model = "gpt-4o-mini"


class _Usage:
    model, input_tokens, output_tokens = "gpt-4o-mini", 120, 40


class _Ctx:
    def __init__(self) -> None:
        self.usage: list = []


def run(tasks: int) -> float:
    """CPU seconds of ``tasks`` simulated tasks through every hook."""
    from aiecs_worker.ops import tracing

    loop = asyncio.new_event_loop()

    async def call(ctx: _Ctx) -> str:
        ctx.usage.append(_Usage())
        return "ok"

    async def attempt(ctx: _Ctx) -> None:
        await tracing.provider_call(_Service(), "chat", _Data(), ctx, call(ctx))
        tracing.terminal("completed")

    t0 = time.process_time()
    for i in range(tasks):
        headers = {"id": f"celery-{i}"}
        if tracing._on:  # the publish hook (Celery calls it from before_task_publish)
            tracing._on_publish(sender="aiecs.tasks.worker.execute_task", headers=headers,
                                routing_key="fast_tasks")
        with tracing.execution(_Request(headers, f"t{i}"), "execute_task", "fast_tasks"):
            loop.run_until_complete(attempt(_Ctx()))
    if tracing._on:
        tracing._tracing().tracer_provider.force_flush()
    used = time.process_time() - t0
    loop.close()
    return used


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--child", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.child == "on":
            from aiecs_worker.ops import tracing

            tracing.install()
            tracing.setup("aiecs-bench")
        run(200)  # warm-up (imports, first export)
        print(json.dumps({"cpu_s": run(args.tasks)}), flush=True)
        return
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        endpoint = sink.stdout.readline().strip()
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
               "OTEL_METRIC_EXPORT_INTERVAL": "60000"}
        out = {}
        for mode in ("off", "on", "off", "on", "off", "on"):
            done = subprocess.run([sys.executable, "-m", "bench.tracing_micro", "--child", mode,
                                   "--tasks", str(args.tasks)], env=env, check=True,
                                  capture_output=True, text=True)
            out.setdefault(mode, []).append(json.loads(done.stdout.splitlines()[-1])["cpu_s"])
    finally:
        sink.stdin.close()
        spans = sink.stdout.readline().strip()
        sink.wait(timeout=10)
    off = sorted(out["off"])[1] / args.tasks * 1e6
    on = sorted(out["on"])[1] / args.tasks * 1e6
    print(f"{args.tasks} tasks, median of 3: off {off:.1f} µs/task, on {on:.1f} µs/task "
          f"(tracing adds {on - off:.1f} µs of CPU per task, 3 spans + 2 histograms); "
          f"spans received: {spans}")


if __name__ == "__main__":
    main()
