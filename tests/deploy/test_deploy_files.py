"""deploy/: the Dockerfile, the compose file and the Kubernetes manifests, checked
statically (Docker does not run here): they parse, have the shape README "Deployment"
promises, and every command and environment variable in them is one the code really has
and the README documents."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from tests.support.deploy_files import (  # noqa: E402 - after the importorskip
    DEPLOY,
    ROOT,
    compose,
    config,
    containers,
    dockerfile,
    k8s_docs,
    worker_version,
)

README = (ROOT / "README.md").read_text()
UV = shutil.which("uv") or "uv"


# -- commands -----------------------------------------------------------------------------------
def commands() -> list[list[str]]:
    """Every command line in deploy/: compose commands and healthchecks, Kubernetes
    commands and exec probes, the Dockerfile's CMD. (The HTTP health checks that run
    ``python -c``, not aiecs or celery, are tests/deploy/test_probes.py's.)"""
    out = []
    for svc in compose()["services"].values():
        if svc.get("image", "").startswith("redis"):
            continue
        out.append(svc["command"])
        test = svc.get("healthcheck", {}).get("test")
        if test and test[1] != "python":
            assert test[0] == "CMD", test
            out.append(test[1:])
    for _, c in containers():
        out.append(c["command"] + c.get("args", []))
        for probe in ("readinessProbe", "livenessProbe"):
            if "exec" in c.get(probe, {}):
                out.append(c[probe]["exec"]["command"])
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile(), re.M)
    out.append(json.loads(cmd.group(1)))
    return out


def check_aiecs(args: list[str]) -> None:
    from aiecs_worker.cli import main

    command = main.commands[args[0]]  # KeyError: no such subcommand
    command.make_context(args[0], list(args[1:]))  # raises on an unknown option


@functools.cache
def _celery_help(sub: str) -> str:
    from celery.bin.celery import celery
    from click.testing import CliRunner

    result = CliRunner().invoke(celery, ["-A", "aiecs_worker", sub, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def check_celery(args: list[str]) -> None:
    assert args[:2] == ["-A", "aiecs_worker"], args
    sub, rest = args[2], args[3:]
    if sub == "flower":  # Flower's own (tornado) options
        from flower.options import options

        for arg in rest:
            name = arg.removeprefix("--").split("=", 1)[0]
            assert name.replace("_", "-") in options._options, f"flower has no --{name}"
        return
    help_text = _celery_help(sub)
    for arg in rest:
        if arg.startswith("-"):
            assert re.search(rf"(^|[\s,]){re.escape(arg)}([\s,=]|$)", help_text, re.M), (
                f"celery {sub} has no option {arg}")


def test_every_command_is_a_real_one():
    seen = set()
    for cmd in commands():
        assert cmd[0] in ("aiecs", "celery"), cmd
        (check_aiecs if cmd[0] == "aiecs" else check_celery)(cmd[1:])
        seen.add(cmd[1] if cmd[0] == "aiecs" else cmd[3])
    assert {"serve", "worker", "flower", "beat"} <= seen


def test_every_command_is_documented():
    for cmd in commands():
        words = [w for w in cmd if not w.startswith("--timeout") and not w.isdigit()]
        head = " ".join(words[:4] if cmd[0] == "celery" else words[:2])
        assert head in README, f"README does not show `{head}`"
        for option in (w.split("=")[0] for w in cmd if w.startswith("--")):
            assert option in README, f"README does not document {option} (of {cmd})"


# -- environment variables ----------------------------------------------------------------------
def env_names() -> set[str]:
    names = set()
    text = (DEPLOY / "compose.yaml").read_text()
    names |= set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    for svc in compose()["services"].values():
        names |= set(svc.get("environment") or {})
    for doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            names |= set(doc["data"])
    for _, c in containers():
        names |= {e["name"] for e in c.get("env", [])}
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref["key"])
    return names


def _read_by_code(name: str) -> bool:
    from aiecs_worker.server.settings import ServerSettings
    from aiecs_worker.settings import Settings

    if name.lower() in Settings.model_fields or name.lower() in ServerSettings.model_fields:
        return True
    if name.startswith("FLOWER_"):  # Flower reads FLOWER_<OPTION> for each of its options
        from flower.options import options

        return name.removeprefix("FLOWER_").lower().replace("_", "-") in options._options
    sources = (ROOT / "packages").glob("*/src/**/*.py")
    return any(f'"{name}"' in p.read_text() for p in sources)


def test_every_env_var_is_read_by_the_code_and_documented():
    names = env_names()
    assert {"CELERY_BROKER_URL", "REDIS_URL", "AIECS_SECRET_KEY", "FLOWER_BASIC_AUTH"} <= names
    for name in sorted(names):
        assert _read_by_code(name), f"{name} is read by no code"
        assert f"`{name}`" in README, f"README does not document {name}"


# -- shapes -------------------------------------------------------------------------------------
def test_compose_services():
    services = compose()["services"]
    assert {"redis", "worker-fast", "worker-heavy", "server", "flower", "beat"} <= set(services)
    fast, heavy = services["worker-fast"]["command"], services["worker-heavy"]["command"]
    assert fast[fast.index("-Q") + 1] == "fast_tasks" and "custom" in fast
    # the custom pool is aiecs's asyncio pool (README, "Worker pools")
    from aiecs_worker.cli.worker import ASYNCIO_POOL, CUSTOM_POOL_ENV

    assert services["worker-fast"]["environment"][CUSTOM_POOL_ENV] == ASYNCIO_POOL
    assert heavy[heavy.index("-Q") + 1] == "heavy_tasks" and "prefork" in heavy
    for name in ("server", "flower"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("${")
    images = {svc.get("image") for n, svc in services.items() if n != "redis"}
    # one image for every role, pinned to the release it is built from
    assert images == {f"aiecs:{worker_version()}"}
    # beat runs with the rest (users' schedules are accepted by default): no profile
    assert "profiles" not in services["beat"]


def _seconds(duration: str) -> float:
    """A compose duration (``630s``, ``10m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_compose_workers_drain_before_docker_kills_them():
    """Docker's default 10 s before SIGKILL cut executions short (and a provider was called
    twice): each worker's grace period outlasts the hard time limit of what it runs."""
    services = compose()["services"]
    for name in ("worker-fast", "worker-heavy"):
        svc = services[name]
        hard = int(svc["environment"]["CELERY_TASK_TIME_LIMIT"])
        assert svc.get("stop_signal", "SIGTERM") == "SIGTERM", name  # Celery's warm shutdown
        assert _seconds(svc["stop_grace_period"]) > hard, name
        assert int(svc["environment"]["CELERY_TASK_SOFT_TIME_LIMIT"]) < hard


def test_k8s_one_deployment_per_queue_with_resources_and_probes():
    deployments = {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == "Deployment"}
    queues = {}
    for name, c in containers():
        resources = c["resources"]
        assert resources["requests"]["cpu"] and resources["limits"]["memory"], name
        if name != "aiecs-beat":  # beat serves nothing to probe (its checkov exception)
            assert "readinessProbe" in c and "livenessProbe" in c, name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "exec" not in c.get(probe, {}), (name, probe)  # HTTP: no Python per probe
        if c["command"][:4] == ["celery", "-A", "aiecs_worker", "worker"]:
            queues[c["command"][c["command"].index("-Q") + 1]] = name
    assert sorted(queues) == ["fast_tasks", "heavy_tasks"]
    assert len(set(queues.values())) == 2  # one Deployment each

    server = deployments["aiecs-server"]
    labels = server["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for c in server["spec"]["template"]["spec"]["containers"]
             for p in c.get("ports", [])}
    services = [d for d in k8s_docs() if d["kind"] == "Service"]
    assert any(set(s["spec"]["selector"].items()) <= set(labels.items())
               and all(p["targetPort"] in ports for p in s["spec"]["ports"])
               for s in services), "no Service in front of the server"
    for d in deployments.values():
        assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_kustomization_lists_every_manifest():
    """Each kustomization lists every manifest of its folder (an overlay: its base too)."""
    kustomizations = sorted((DEPLOY / "k8s").rglob("kustomization.yaml"))
    assert len(kustomizations) == 3  # the base, the KEDA and the Sentinel overlays
    for path in kustomizations:
        listed = set(yaml.safe_load(path.read_text())["resources"])
        present = {p.name for p in path.parent.glob("*.yaml")} - {"kustomization.yaml"}
        if path.parent != DEPLOY / "k8s":
            present.add("../")
        assert listed == present, path


# -- Dockerfile -----------------------------------------------------------------------------------
def test_dockerfile_multi_stage_non_root_uv():
    text = dockerfile()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, re.M)
    assert stages == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    user = re.search(r"^USER (\S+)$", runtime, re.M).group(1)
    assert user.split(":")[0] not in ("0", "root")
    assert "COPY --from=build /app/.venv /app/.venv" in runtime
    # the files the build copies exist
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in sources.split():
            assert (ROOT / source).exists(), source


def uv_sync_args() -> list[str]:
    """The options of the Dockerfile's ``uv sync`` (its lines joined)."""
    lines = dockerfile().split("\n")
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("uv sync"))
    text = ""
    for line in lines[start:]:
        text += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            break
    return shlex.split(text)[2:]


def test_dockerfile_uv_sync_is_valid():
    """The build's ``uv sync`` takes these options and names real packages and extras."""
    args = uv_sync_args()
    help_text = subprocess.run([UV, "sync", "--help"], capture_output=True, text=True,
                               check=True).stdout
    for arg in args:
        if arg.startswith("--"):
            assert arg in help_text, f"uv sync has no {arg}"
    members = {tomllib.loads(p.read_text())["project"]["name"]: p
               for p in (ROOT / "packages").glob("*/pyproject.toml")}
    packages = [args[i + 1] for i, a in enumerate(args) if a == "--package"]
    assert set(packages) <= set(members)
    extras = [args[i + 1] for i, a in enumerate(args) if a == "--extra"]
    worker = tomllib.loads(members["aiecs-worker"].read_text())
    assert set(extras) <= set(worker["project"]["optional-dependencies"])


@pytest.mark.skipif(sys.platform != "linux", reason="the image is Linux")
def test_dockerfile_uv_sync_resolves_from_the_lock(tmp_path):
    """A dry run in a copy of exactly what the build copies: the lock has everything."""
    args = uv_sync_args()
    files = subprocess.run(["git", "ls-files", "pyproject.toml", "uv.lock", "README.md",
                            "packages"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((ROOT / name).read_bytes())
    out = subprocess.run([UV, "sync", *args, "--dry-run", "--offline"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                              "UV_PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    plan = out.stdout + out.stderr
    for name in ("aiecs-worker", "aiecs-providers-openai", "aiecs-providers-vertex",
                 "aiecs-providers-xai", "flower"):
        assert f" {name}" in plan, name
    for name in ("aiecs-testplugin", "pytest", "matplotlib"):
        assert f" {name}" not in plan, name


def test_beat_command_starts(aiecs_redis, tmp_path):
    """The compose file's beat command, run: it starts and stops cleanly (the others run
    in tests/worker, tests/server and test_flower)."""
    import os
    import signal

    from tests.support.events import wait_until

    command = compose()["services"]["beat"]["command"]
    # --schedule: a private file; INFO: the start is logged
    command = [*command[:-1], str(tmp_path / "schedule"), "--loglevel", "INFO"]
    celery = str(Path(sys.executable).with_name("celery"))
    log = tmp_path / "beat.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([celery, *command[1:]], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "CELERY_BROKER_URL": aiecs_redis.url},
                                start_new_session=True)
    try:
        try:
            wait_until(lambda: b"beat: Starting" in log.read_bytes() or proc.poll() is not None,
                       timeout=60, interval=0.1)
        except AssertionError:
            raise AssertionError(log.read_text()) from None
        assert proc.poll() is None, log.read_text()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_fast_worker_command_runs_tasks_on_the_event_loop(aiecs_redis, start_worker):
    """The deploy files' fast worker, as they run it (the compose command and its pool
    variable; the Kubernetes container runs the same): aiecs's asyncio pool consumes
    fast_tasks on the worker's loop and runs a submitted task to COMPLETED."""
    from aiecs_worker import execute_task
    from aiecs_worker.cli.worker import CUSTOM_POOL_ENV

    svc = compose()["services"]["worker-fast"]
    command = svc["command"]
    (container,) = [c for name, c in containers() if name == "aiecs-worker-fast"]
    k8s_env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert container["command"] == command
    assert k8s_env[CUSTOM_POOL_ENV] == svc["environment"][CUSTOM_POOL_ENV]

    def value(name: str) -> str:
        return command[command.index(name) + 1]

    worker = start_worker(pool=value("--pool"), concurrency=int(value("--concurrency")),
                          queues=value("-Q"),
                          env={CUSTOM_POOL_ENV: svc["environment"][CUSTOM_POOL_ENV]})
    task_id = f"deploy-{uuid.uuid4().hex[:8]}"
    res = execute_task.delay(task_name="echo", user_id="alice", task_id=task_id, step=1,
                             mode="test", service="echo", input_data={"text": "a b"},
                             context={})
    assert res.get(timeout=30)["status"] == "completed"
    assert "--pool asyncio: fast_tasks consumed on the event loop" in worker.log()


def test_scraped_workers_bind_metrics_explicitly():
    """The metrics endpoint defaults to 127.0.0.1 (no authentication); a deployment whose
    Prometheus scrapes workers over the network says AIECS_METRICS_HOST=0.0.0.0 itself."""
    from aiecs_worker.settings import Settings

    assert Settings.model_fields["aiecs_metrics_host"].default == "127.0.0.1"
    for name, svc in compose()["services"].items():
        env = svc.get("environment") or {}
        if "AIECS_METRICS_PORT" in env:
            assert env.get("AIECS_METRICS_HOST") == "0.0.0.0", name
    config_ = config()
    scraped = [d for d in k8s_docs() if d["kind"] == "Deployment" and d["spec"]["template"][
        "metadata"].get("annotations", {}).get("prometheus.io/port") == config_.get(
        "AIECS_METRICS_PORT")]
    assert scraped and config_.get("AIECS_METRICS_HOST") == "0.0.0.0"
