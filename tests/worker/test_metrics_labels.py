"""Label values a client chooses are bounded per process (models) or declared names only
(queue, mode, service, operation), and a bad setting is refused naming its variable."""

from __future__ import annotations

import re

import pytest


def test_models_past_the_bound_count_as_other(monkeypatch):
    from aiecs_core import Usage
    from aiecs_worker.ops import metrics
    from aiecs_worker.ops.metrics_http import exposition

    metrics.load()
    monkeypatch.setitem(metrics._labels, "model", set())
    monkeypatch.setattr(metrics, "MAX_LABEL_VALUES", 3)
    for i in range(10):
        metrics._usage(Usage(provider="p", model=f"random-{i}", input_tokens=1))
    body = exposition()[0].decode()
    names = {n for n in re.findall(r'aiecs_provider_tokens_total\{[^}]*model="([^"]+)"', body)
             if n.startswith("random-") or n == "other"}
    assert names == {"random-0", "random-1", "random-2", "other"}
    assert ('aiecs_provider_tokens_total{direction="input",model="other",provider="p"} 7.0'
            in body)


def test_names_nothing_declares_are_unknown(monkeypatch):
    from aiecs_worker.ops import metrics

    metrics.load()  # (a worker loads with its queues: see test_metrics_trust.py)
    monkeypatch.setattr(metrics, "_queues", frozenset({"fast_tasks", "heavy_tasks"}))
    assert metrics.execution_labels("fast_tasks", "test", "echo", "echo") == (
        "fast_tasks", "test", "echo", "echo")
    assert metrics.execution_labels("fast_tasks", "test", "echo", "made-up") == (
        "fast_tasks", "unknown", "unknown", "unknown")
    assert metrics.execution_labels("any_queue", "test", "echo", "echo")[0] == "unknown"


@pytest.mark.parametrize(("env", "value"), [("AIECS_LOG_FORMAT", "xml"),
                                            ("AIECS_METRICS_PORT", "70000")])
def test_a_bad_setting_names_its_variable(monkeypatch, env, value):
    from aiecs_core import ConfigurationError
    from aiecs_worker.settings import load_settings

    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigurationError, match=env):
        load_settings()
