"""The shipped Grafana dashboard (deploy/grafana/aiecs.json) asks only for metrics the code
exports, and carries the specification's three queries (section 7.1) as they are written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "aiecs.json"
SPEC_QUERIES = (
    "sum(rate(celery_task_executions_total[5m])) by (status)",
    "histogram_quantile(0.95, rate(celery_task_duration_seconds_bucket[5m]))",
    "celery_active_tasks",
)


def exported_sample_names() -> set[str]:
    """Every sample name of the metrics page, with every metric touched once."""
    import asyncio

    from aiecs_core import Usage
    from aiecs_worker.ops import metrics
    from aiecs_worker.ops.metrics_http import exposition
    from prometheus_client.parser import text_string_to_metric_families

    metrics.load()

    class Service:
        provider, name = "p", "p"

    class Ctx:
        usage: list = []

    async def call():
        Ctx.usage.append(Usage(provider="p", model="m", input_tokens=1, output_tokens=1,
                               cost=0.5))

    async def fail():
        raise ValueError("a provider bug")

    asyncio.run(metrics.provider_call(Service(), "op", Ctx, call()))
    with pytest.raises(ValueError):
        asyncio.run(metrics.provider_call(Service(), "op", Ctx, fail()))
    metrics.submitted("op")
    metrics.started("op")
    metrics.stopped()
    metrics.finished("op", "completed", 0.0)
    metrics.rate_limit_wait("p", 0.1)
    metrics.socket_connected(0)
    metrics.delivered(1)
    metrics.replayed(1)
    metrics.listener_restarted()
    body, _ = exposition()
    return {s.name for fam in text_string_to_metric_families(body.decode())
            for s in fam.samples}


def expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_every_panel_queries_only_exported_metrics():
    names = exported_sample_names()
    for expr in expressions():
        used = {w for w in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
                if w.startswith(("celery_", "aiecs_"))}
        assert used, expr
        assert used <= names, (expr, used - names)


@pytest.mark.parametrize("query", SPEC_QUERIES)
def test_the_specification_queries_are_panels(query):
    assert query in expressions()
