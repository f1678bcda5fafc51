"""The shipped Grafana dashboard (deploy/grafana/aiecs.json) asks only for metrics aiecs
exports, carries the specification's queries (section 7.1) where they are right, and its
percentiles aggregate the buckets first (the specification's
``histogram_quantile(0.95, rate(...))`` gives one series per instance and label set).
Every panel is also run against a real Prometheus scraping a real worker and server:
tests/server/test_dashboard_prometheus.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "aiecs.json"
SPEC_QUERIES = (
    "sum(rate(celery_task_executions_total[5m])) by (status)",
    "celery_active_tasks",
)
SPEC_P95 = "histogram_quantile(0.95, rate(celery_task_duration_seconds_bucket[5m]))"


def expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_every_panel_queries_only_exported_metrics():
    from aiecs_worker.ops.metrics import METRIC_NAMES

    names = set(METRIC_NAMES)
    for expr in expressions():
        used = {re.sub(r"_(bucket|sum|count)$", "", w)
                for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
                if w.startswith(("celery_", "aiecs_"))}
        assert used, expr
        assert used <= names, (expr, used - names)


@pytest.mark.parametrize("query", SPEC_QUERIES)
def test_the_specification_queries_are_panels(query):
    assert query in expressions()


def test_percentiles_aggregate_the_buckets_first():
    assert SPEC_P95 not in expressions()
    quantiles = [e for e in expressions() if "histogram_quantile" in e]
    assert quantiles
    for expr in quantiles:
        assert re.search(r"(sum by \(le\b|\) by \(le\b)", expr), expr
