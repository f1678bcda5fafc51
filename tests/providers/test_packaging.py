"""Packaging as users install it: fresh virtual environments with one provider (or the
example third-party provider) next to aiecs-core and aiecs-worker, listed and served by a
worker started from that environment; and each provider package's tests run alone.

Fresh environments are built with ``uv pip install`` from the local package folders,
pinned to the workspace's lock (``uv export``), so they resolve exactly what CI resolves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiecs_worker import execute_task

from tests.support.events import wait_terminal
from tests.support.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
UV = shutil.which("uv")
EXAMPLE = ROOT / "examples" / "aiecs-example-textstats"
PROVIDERS = {
    "openai": ["packages/openai-compat", "packages/providers-openai"],
    "xai": ["packages/openai-compat", "packages/providers-xai"],
    "vertex": ["packages/providers-vertex"],
}

pytestmark = pytest.mark.skipif(UV is None, reason="uv is needed to build environments")


_HAS_SDKS = """
import importlib.util, json
def has(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
print(json.dumps([m for m in ("openai", "google.genai") if has(m)]))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "AIECS_PLUGINS", "PYTHONPATH")}


def make_venv(path: Path, *packages: str) -> Path:
    """A fresh venv at ``path`` with aiecs-core, aiecs-worker and ``packages``."""
    constraints = path / "constraints.txt"
    path.mkdir(parents=True, exist_ok=True)
    export = subprocess.run(
        [UV, "export", "--frozen", "--no-hashes", "--all-packages", "--no-emit-workspace",
         "--no-dev", "-q", "-o", str(constraints)],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert export.returncode == 0, export.stderr
    venv = path / "venv"
    for cmd in (
        [UV, "venv", "-q", str(venv), "--python", sys.executable],
        [UV, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
         "-c", str(constraints), "packages/core", "packages/worker", *packages],
    ):
        proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
    return venv


def listing(venv: Path) -> dict:
    proc = subprocess.run([str(venv / "bin" / "aiecs"), "plugins", "--json"], env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def submit(mode: str, service: str, task_name: str, input_data: dict) -> str:
    task_id = f"t{uuid.uuid4().hex[:10]}"
    execute_task.delay(task_name=task_name, user_id="alice", task_id=task_id, step=1,
                       mode=mode, service=service, input_data=input_data, context={})
    return task_id


@pytest.mark.slow
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_one_provider_alone_lists_only_itself(tmp_path, provider):
    venv = make_venv(tmp_path, *PROVIDERS[provider])
    found = listing(venv)
    assert found["failures"] == []
    assert [(p["name"], p["services"]) for p in found["plugins"]] == [
        (provider, [f"llm/{provider}"])]
    sdks = subprocess.run([str(venv / "bin" / "python"), "-c", _HAS_SDKS], env=_env(),
                          capture_output=True, text=True, check=True)
    expected = ["google.genai"] if provider == "vertex" else ["openai"]
    assert json.loads(sdks.stdout) == expected  # no other provider's SDK came along


@pytest.mark.slow
def test_a_worker_with_only_xai_serves_only_xai(tmp_path, aiecs_redis, start_worker):
    venv = make_venv(tmp_path, *PROVIDERS["xai"])
    with FakeOpenAI() as fake:
        start_worker(celery=str(venv / "bin" / "celery"),
                     env={"XAI_API_KEY": fake.api_key, "XAI_BASE_URL": fake.base_url,
                          "OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url})
        client = aiecs_redis.client()
        served = submit("llm", "xai", "chat", {"model": "grok", "messages": [
            {"role": "user", "content": "hi"}]})
        terminal, _ = wait_terminal(client, "alice", served)
        assert terminal["status"] == "completed", terminal
        # The shared OpenAI-wire package is installed, but exposes no OpenAI service.
        refused = submit("llm", "openai", "chat", {"model": "gpt", "messages": [
            {"role": "user", "content": "hi"}]})
        terminal, _ = wait_terminal(client, "alice", refused)
        assert terminal["status"] == "failed"
        assert terminal["error"]["type"] == "ServiceNotFoundError"
        assert "available: llm/xai" in terminal["error"]["message"]
        assert len(fake.requests) == 1


@pytest.mark.slow
def test_example_third_party_provider_in_a_fresh_venv(tmp_path, aiecs_redis, start_worker):
    venv = make_venv(tmp_path, f"{EXAMPLE}[test]")
    found = listing(venv)
    assert [(p["name"], p["distribution"], p["services"]) for p in found["plugins"]] == [
        ("textstats", "aiecs-example-textstats", ["text/stats"])]
    # Its own tests (the conformance suite included) pass where it is installed.
    tests = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(EXAMPLE / "tests")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    # A running worker from that environment discovers and serves it.
    start_worker(celery=str(venv / "bin" / "celery"))
    client = aiecs_redis.client()
    analyzed = submit("text", "stats", "analyze", {"text": "What a great, good day."})
    terminal, _ = wait_terminal(client, "alice", analyzed)
    assert terminal["status"] == "completed", terminal
    assert terminal["result"]["sentiment"] == "positive"
    outlined = submit("text", "stats", "outline", {"topic": "AI", "sections": 3})
    terminal, events = wait_terminal(client, "alice", outlined)
    assert terminal["status"] == "completed", terminal
    assert len([e for e in events if e["type"] == "stream"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_each_provider_package_tests_pass_alone(tmp_path, provider):
    """``uv run --package ... --exact --group test pytest tests/providers/<p>``, in an
    environment of its own (the shared one is left alone)."""
    env = _env() | {"UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv")}
    proc = subprocess.run(
        [UV, "run", "--frozen", "--package", f"aiecs-providers-{provider}", "--exact",
         "--group", "test", "pytest", f"tests/providers/{provider}", "-q",
         "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
