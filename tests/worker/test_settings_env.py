"""The worker's settings are read from the environment by ``load_settings`` (variable =
field name in capitals, any case; explicit arguments win), without pydantic-settings, which
the worker no longer imports at start (see aiecs_worker.settings)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from aiecs_core import ConfigurationError
from aiecs_worker.settings import load_settings


def test_variables_are_read_in_any_case_and_arguments_win(monkeypatch):
    monkeypatch.setenv("AIECS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("celery_worker_concurrency", "3")
    monkeypatch.setenv("AIECS_RETRY_BACKOFF", "0.25")
    monkeypatch.setenv("NOT_A_SETTING", "ignored")
    s = load_settings(aiecs_max_attempts=5)
    assert s.aiecs_max_attempts == 5 and s.celery_worker_concurrency == 3
    assert s.aiecs_retry_backoff == 0.25
    assert s.celery_task_soft_time_limit == 300  # default


def test_an_invalid_value_names_its_variable(monkeypatch):
    monkeypatch.setenv("CELERY_TASK_TIME_LIMIT", "soon")
    with pytest.raises(ConfigurationError, match="CELERY_TASK_TIME_LIMIT") as info:
        load_settings()
    assert info.value.details["env_var"] == "CELERY_TASK_TIME_LIMIT"
    monkeypatch.setenv("CELERY_TASK_TIME_LIMIT", "5")
    with pytest.raises(ConfigurationError, match="must be less than"):
        load_settings()


def test_the_worker_does_not_import_pydantic_settings():
    code = "import aiecs_worker, sys, json; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert "pydantic_settings" not in json.loads(out.stdout.splitlines()[-1])
