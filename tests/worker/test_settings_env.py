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


# --- one model family: one loader, one naming of variables, one error format ------------------


def test_a_bad_value_is_one_line_naming_the_variable_its_value_and_the_fix(monkeypatch):
    monkeypatch.setenv("AIECS_MAX_ATTEMPTS", "lots")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    message = info.value.message
    assert "\n" not in message and info.value.env_var == "AIECS_MAX_ATTEMPTS"
    assert "AIECS_MAX_ATTEMPTS='lots': Input should be a valid integer" in message
    assert "fix: set AIECS_MAX_ATTEMPTS to a valid value, or unset it for its default (4)" \
        in message


def test_a_url_password_is_masked_in_the_error(monkeypatch):
    monkeypatch.setenv("CELERY_BROKER_URL", "http://user:hunter2@broker:6379/0")
    with pytest.raises(ConfigurationError, match="CELERY_BROKER_URL") as info:
        load_settings()
    assert "hunter2" not in info.value.message and ":***@broker" in info.value.message


def test_server_settings_are_read_by_the_same_loader(monkeypatch):
    from aiecs_worker.server.settings import load_server_settings

    monkeypatch.setenv("aiecs_port", "8123")  # any case, as the worker's settings
    monkeypatch.setenv("AIECS_HOST", "10.0.0.5")
    assert load_server_settings(aiecs_host="10.0.0.6").aiecs_port == 8123
    assert load_server_settings(aiecs_host="10.0.0.6").aiecs_host == "10.0.0.6"
    monkeypatch.setenv("AIECS_PORT", "70000")
    with pytest.raises(ConfigurationError) as info:
        load_server_settings()
    assert info.value.env_var == "AIECS_PORT"
    assert info.value.message == (
        "invalid aiecs server configuration: AIECS_PORT='70000': Input should be less than "
        "or equal to 65535; fix: set AIECS_PORT to a valid value, or unset it for its "
        "default (8000)")


def test_a_short_secret_is_not_echoed(monkeypatch):
    from aiecs_worker.server.settings import load_server_settings

    monkeypatch.setenv("AIECS_SECRET_KEY", "tooshort-but-secret")
    with pytest.raises(ConfigurationError) as info:
        load_server_settings()
    assert info.value.env_var == "AIECS_SECRET_KEY"
    assert "tooshort" not in info.value.message and "at least 32 characters" in str(info.value)


def test_a_check_across_variables_names_the_first_and_the_fix(monkeypatch):
    monkeypatch.setenv("CELERY_TASK_SOFT_TIME_LIMIT", "700")
    with pytest.raises(ConfigurationError) as info:
        load_settings()
    assert info.value.env_var == "CELERY_TASK_SOFT_TIME_LIMIT"
    assert "fix: lower the first or raise the second" in info.value.message


def test_warm_and_rate_limits_are_settings(monkeypatch):
    from aiecs_worker.runner.ratelimit import parse_limits

    monkeypatch.setenv("AIECS_WARM", "off")
    monkeypatch.setenv("AIECS_RATE_LIMITS", '{"openai/*": {"rpm": 5}}')
    s = load_settings()
    assert s.aiecs_warm is False and parse_limits(s.aiecs_rate_limits)["openai/*"].rpm == 5
    monkeypatch.setenv("AIECS_WARM", "")
    assert load_settings().aiecs_warm is True  # blank: the default, as before
    monkeypatch.setenv("AIECS_WARM", "maybe")
    with pytest.raises(ConfigurationError, match="AIECS_WARM='maybe'"):
        load_settings()
    with pytest.raises(ConfigurationError, match=r"AIECS_RATE_LIMITS='\[1\]': is invalid"):
        parse_limits("[1]")


def test_no_setting_is_read_from_os_environ_outside_the_settings_modules():
    """Every ``os.environ`` / ``getenv`` in aiecs_worker is in the settings module or a
    commented exception (a child's environment, prometheus_client's own variable, PATH)."""
    from pathlib import Path

    import aiecs_worker

    root = Path(aiecs_worker.__file__).parent
    # store/keys.py: AIECS_REDIS_CLUSTER and AIECS_REDIS_SHARDS fix every key name when
    # keys.py is imported
    # (declared and checked in settings.py; docs/operations.md, "On a Redis Cluster")
    # cli/worker.py: the children's environment, and Celery's CELERY_CUSTOM_WORKER_POOL
    # set for --pool asyncio (a value written for Celery to read, not a setting read)
    allowed = {"settings.py": 2, "cli/worker.py": 2, "cli/dev.py": 2, "ops/metrics_http.py": 5,
               "store/keys.py": 2}
    found: dict[str, int] = {}
    for path in root.rglob("*.py"):
        code = [line for line in path.read_text().splitlines()
                if not line.lstrip().startswith(("#", "\"", "'"))]
        n = sum(("os.environ" in line or "getenv(" in line) for line in code)
        if n:
            found[str(path.relative_to(root))] = n
    assert found == allowed
