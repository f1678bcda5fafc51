"""The test plugin (test/echo, test/buggy) is installed by ``uv sync --all-packages`` but
serves nothing without ``AIECS_TEST_SERVICES=1``: no user can reach a service that
SIGKILLs its worker in a deployment made by following the README."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
from aiecs_core import ServiceNotFoundError
from aiecs_core.registry import ServiceRegistry

from tests.support.events import wait_for_event

TERMINAL = {"completed", "failed", "timed_out", "cancelled"}


def _request(task_id: str, service: str, task_name: str, input_data: dict) -> dict:
    return dict(task_name=task_name, user_id="alice", task_id=task_id, step=1, mode="test",
                service=service, input_data=input_data, context={})


def test_without_the_opt_in_the_test_plugins_are_listed_as_disabled(monkeypatch):
    monkeypatch.delenv("AIECS_TEST_SERVICES", raising=False)
    registry = ServiceRegistry()
    registry.load_entry_points()  # the real, installed entry points
    listing = registry.listing()
    assert not [s for s in listing["services"] if s["mode"] == "test"]
    disabled = {d["name"]: d for d in listing["disabled"]}
    assert disabled["testplugin"]["distribution"] == "aiecs-testplugin"
    assert disabled["testplugin"]["reason"] == (
        "test services only (test/buggy): enabled by AIECS_TEST_SERVICES=1")
    assert disabled["echo"]["reason"] == (
        "test services only (test/echo): enabled by AIECS_TEST_SERVICES=1")
    assert listing["failures"] == []  # disabled is not failed
    with pytest.raises(ServiceNotFoundError) as missing:
        registry.operation("test", "echo", "echo")
    assert missing.value.message == ("service test/echo is a test service, not enabled here "
                                     "(it loads only with AIECS_TEST_SERVICES=1)")
    lines = [line for _, line in registry.report()]
    assert any(line.startswith("plugin testplugin (aiecs-testplugin) disabled: ")
               for line in lines)

    monkeypatch.setenv("AIECS_TEST_SERVICES", "1")
    enabled = ServiceRegistry()
    enabled.load_entry_points()
    assert {("test", "echo"), ("test", "buggy")} <= set(enabled.keys())
    assert enabled.listing()["disabled"] == []


def test_aiecs_plugins_shows_them_disabled_and_exits_0(monkeypatch):
    monkeypatch.delenv("AIECS_TEST_SERVICES", raising=False)
    out = subprocess.run([sys.executable, "-m", "aiecs_worker.cli", "plugins", "--json"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    assert {d["name"] for d in listing["disabled"]} >= {"echo", "testplugin"}
    table = subprocess.run([sys.executable, "-m", "aiecs_worker.cli", "plugins"],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0
    assert "Disabled plugins" in table.stdout and "AIECS_TEST_SERVICES=1" in table.stdout


def test_a_worker_without_the_opt_in_refuses_the_crash_service_and_lives(
        aiecs_redis, start_worker, monkeypatch):
    """{"fail": "crash"} SIGKILLs the process that runs it: here nothing runs it."""
    from aiecs_worker import execute_task

    monkeypatch.delenv("AIECS_TEST_SERVICES")  # the worker inherits this environment
    worker = start_worker()
    client = aiecs_redis.client()
    for service, op, data in (("echo", "echo", {"text": "x", "fail": "crash"}),
                              ("buggy", "explode", {})):
        task_id = f"t{uuid.uuid4().hex[:8]}"
        execute_task.delay(**_request(task_id, service, op, data))
        event, _ = wait_for_event(client, "alice", task_id,
                                  lambda e: e["type"] == "status" and e["status"] in TERMINAL)
        assert event["status"] == "failed"
        assert event["error"]["type"] == "ServiceNotFoundError"
        assert event["error"]["message"] == (
            f"service test/{service} is a test service, not enabled here (it loads only "
            "with AIECS_TEST_SERVICES=1)")
    assert worker.alive()
    assert "plugin testplugin (aiecs-testplugin) disabled: " in worker.log()


def test_a_worker_with_the_opt_in_serves_them(aiecs_redis, start_worker):
    from aiecs_worker import execute_task

    worker = start_worker()  # the suite sets AIECS_TEST_SERVICES=1 for what it starts
    client = aiecs_redis.client()
    task_id = f"t{uuid.uuid4().hex[:8]}"
    execute_task.delay(**_request(task_id, "echo", "echo", {"text": "served"}))
    event, _ = wait_for_event(client, "alice", task_id,
                              lambda e: e["type"] == "status" and e["status"] in TERMINAL)
    assert event["status"] == "completed"
    assert worker.alive()
