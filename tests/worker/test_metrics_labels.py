"""Label values a client chooses (task names, models) are bounded per process, and a bad
setting is refused naming its variable."""

from __future__ import annotations

import re

import pytest


def test_names_past_the_bound_count_as_other(monkeypatch):
    from aiecs_worker.ops import metrics
    from aiecs_worker.ops.metrics_http import exposition

    metrics.load()
    monkeypatch.setitem(metrics._labels, "task_name", set())
    monkeypatch.setattr(metrics, "MAX_LABEL_VALUES", 3)
    for i in range(10):
        metrics.submitted(f"random-{i}")
    body = exposition()[0].decode()
    names = {n for n in re.findall(r'celery_task_executions_total\{[^}]*task_name="([^"]+)"',
                                   body) if n.startswith("random-") or n == "other"}
    assert names == {"random-0", "random-1", "random-2", "other"}
    assert 'celery_task_executions_total{status="pending",task_name="other"} 7.0' in body


@pytest.mark.parametrize(("env", "value"), [("AIECS_LOG_FORMAT", "xml"),
                                            ("AIECS_METRICS_PORT", "70000")])
def test_a_bad_setting_names_its_variable(monkeypatch, env, value):
    from aiecs_core import ConfigurationError
    from aiecs_worker.settings import load_settings

    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigurationError, match=env):
        load_settings()
