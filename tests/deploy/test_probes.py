"""The health checks of deploy/: Kubernetes' HTTP probes ask paths the processes really
serve, on the ports they really listen on; the image's HEALTHCHECK and compose's checks
(``python -c`` with the standard library) run, pass against a real endpoint and fail when
nothing answers."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

yaml = pytest.importorskip("yaml")

from tests.support.deploy_files import (  # noqa: E402 - after the importorskip
    compose,
    config,
    containers,
    dockerfile,
)


def server_paths() -> set[str]:
    from aiecs_worker.server.routes import health, pages

    return {r.path for r in [*health.ROUTES, *pages.ROUTES]}


#: what a worker's metrics endpoint serves (aiecs_worker.ops.metrics_http.serve)
WORKER_PATHS = {"/metrics", "/"}


def test_k8s_http_probes_ask_served_paths_on_served_ports():
    probed = 0
    for name, c in containers():
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = c.get(kind)
            if probe is None:
                continue
            get = probe["httpGet"]
            port = ports[get["port"]]
            if c["command"][:2] == ["aiecs", "serve"]:
                assert port == int(c["command"][c["command"].index("--port") + 1]), name
                assert get["path"] in server_paths(), (name, kind)
            else:
                assert c["command"][3] == "worker", name
                assert port == int(config()["AIECS_METRICS_PORT"]), name
                assert get["path"] in WORKER_PATHS, (name, kind)
            assert probe.get("timeoutSeconds", 1) < probe.get("periodSeconds", 10)
            probed += 1
    assert probed >= 7  # server 2, each worker 3
    server = next(c for _, c in containers() if c["command"][:2] == ["aiecs", "serve"])
    assert server["readinessProbe"]["httpGet"]["path"] == "/healthz"  # Redis + listener


def health_checks() -> list[tuple[str, str]]:
    """(where, the Python code) of every ``python -c`` health check in deploy/."""
    out = []
    for name, svc in compose()["services"].items():
        test = svc.get("healthcheck", {}).get("test")
        if test and test[1] == "python":
            assert test[:3] == ["CMD", "python", "-c"], name
            out.append((f"compose {name}", test[3]))
    text = dockerfile().replace("\\\n", " ")
    cmd = re.search(r"^HEALTHCHECK .* CMD (\[.*\])$", text, re.M)
    assert cmd, "the Dockerfile has no HEALTHCHECK"
    args = yaml.safe_load(cmd.group(1))
    assert args[:2] == ["python", "-c"]
    out.append(("Dockerfile", args[2]))
    return out


def test_every_service_with_a_port_has_a_health_check():
    services = compose()["services"]
    checked = {w.split()[1] for w, _ in health_checks() if w.startswith("compose")}
    assert checked == {"worker-fast", "worker-heavy", "flower"}
    assert services["server"].get("healthcheck") is None  # the image's HEALTHCHECK
    assert services["beat"]["healthcheck"] == {"disable": True}  # serves nothing
    for where, code in health_checks():
        url = re.search(r"'(http://127\.0\.0\.1:(\d+)(/\S*))'", code)
        assert url, where
        port, path = int(url.group(2)), url.group(3)
        if where == "Dockerfile":
            assert (port, path) == (8000, "/healthz") and path in server_paths()
        elif where == "compose flower":
            assert (port, path) == (5555, "/healthcheck")
        else:
            env = services[where.split()[1]]["environment"]
            assert port == int(env["AIECS_METRICS_PORT"]) and path in WORKER_PATHS, where


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_health_check_runs_against_a_real_metrics_endpoint():
    """The compose check's code itself, pointed at a real metrics endpoint: exit 0; at a
    port where nothing listens: non-zero, within its timeout."""
    (_, code), = [(w, c) for w, c in health_checks() if w == "compose worker-fast"]
    # the worker's metrics endpoint, in a process of its own (stopped below)
    server = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from aiecs_worker.ops import metrics_http; "
         "print(metrics_http.serve(0, '127.0.0.1'), flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        port = int(server.stdout.readline())
        served = code.replace(":9808/", f":{port}/")
        assert served != code
        ok = subprocess.run([sys.executable, "-c", served], capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        server.kill()
        server.wait(timeout=10)
    dead = code.replace(":9808/", f":{_free_port()}/")
    bad = subprocess.run([sys.executable, "-c", dead], capture_output=True, timeout=30)
    assert bad.returncode != 0 and b"Connection refused" in bad.stderr
