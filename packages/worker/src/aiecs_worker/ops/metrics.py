"""Prometheus metrics of the worker and the progress server: what they count, and where.

Every hook here is one call at its site and costs a counter increment or two. A process
records nothing until it has loaded the metrics (:func:`load`): worker processes do as
their runtime starts, the progress server as it starts; a script that only submits tasks
never imports prometheus_client. Exposition (the HTTP endpoints, the prefork and
multi-process aggregation) is :mod:`aiecs_worker.ops.metrics_http`.

The specification's three (section 6.4), with ``status`` one of the six TaskStatus values:

- ``celery_task_executions_total{task_name,status}``: ``pending`` counted by the process
  that submitted the execution (the progress server's task API), ``running`` when its
  operation starts, and the terminal status (``completed``, ``failed``, ``timed_out``,
  ``cancelled``) when the worker records it;
- ``celery_task_duration_seconds{task_name}``: from the worker receiving an execution to
  its recorded outcome;
- ``celery_active_tasks``: operations running now (summed over live processes).

Provider calls (one per attempt of an operation), labelled by the service's provider
name (``openai``, ``vertex``, ``xai``, ...) and ``operation``; tokens and cost by
``provider`` and ``model`` from the usage each call recorded:
``aiecs_provider_requests_total``, ``aiecs_provider_errors_total{error_type}``,
``aiecs_provider_call_duration_seconds``, ``aiecs_provider_calls_in_flight`` (per process:
a ``pid`` label under multi-process aggregation), ``aiecs_provider_tokens_total{direction}``
(``input``/``output``), ``aiecs_provider_cost_usd_total``,
``aiecs_provider_rate_limit_waits_total`` and ``..._wait_seconds_total`` (each sleep
waiting for cluster-wide capacity, ``AIECS_RATE_LIMITS``).

Quotas (:mod:`aiecs_worker.store.quotas`): ``aiecs_quota_refusals_total{setting}``, submissions
refused, labelled by the environment variable of the quota (a fixed set).

Budgets (:mod:`aiecs_worker.store.budgets`): ``aiecs_budget_refusals_total{period,kind}``,
submissions refused by a user's hard limit (``day``/``month``, ``usd``/``tokens``).

Progress server: ``aiecs_server_connected_sockets``, ``aiecs_server_events_delivered_total``
(packets of live events sent to sockets), ``aiecs_server_replays_total`` and
``aiecs_server_replayed_events_total``, ``aiecs_server_listener_restarts_total``.

Background work (:mod:`aiecs_worker.ops.background`): ``aiecs_background_failures_total{kind}``,
each failure of a loop that runs unattended and retries (``lease``: the lease renewal and
sweep loop; ``workflow_sweep``: advancing one workflow a process left behind;
``workflow_advance``: advancing a workflow after its step; ``workflow_release``: releasing
a step whose inputs are ready).

Label values users choose (``task_name``, ``model``) are bounded: past
:data:`MAX_LABEL_VALUES` distinct values per label in one process, new ones count as
``other``, so a client sending random names cannot blow up Prometheus.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from aiecs_core import AiecsError

__all__ = ["MAX_LABEL_VALUES", "METRIC_NAMES", "load", "loaded"]

#: Distinct values one user-chosen label takes in a process before new ones become "other".
MAX_LABEL_VALUES = 200
#: Buckets of task durations (s): AI calls take from tens of milliseconds to minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Buckets of one provider call's latency (s).
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)

_m: Any = None  # the metric objects (a namespace), once loaded
_lock = threading.Lock()
_labels: dict[str, set[str]] = {"task_name": set(), "model": set()}
_children: dict[tuple[str, tuple[str, ...]], Any] = {}


def _define(prom: Any) -> dict[str, Any]:
    c, g, h = prom.Counter, prom.Gauge, prom.Histogram
    return {
        "executions": c("celery_task_executions_total", "Task executions by status",
                        ["task_name", "status"], registry=None),
        "duration": h("celery_task_duration_seconds", "Task execution duration",
                      ["task_name"], buckets=DURATION_BUCKETS, registry=None),
        "active": g("celery_active_tasks", "Operations running now",
                    multiprocess_mode="livesum", registry=None),
        "requests": c("aiecs_provider_requests_total", "Provider calls (operation attempts)",
                      ["provider", "operation"], registry=None),
        "errors": c("aiecs_provider_errors_total", "Provider calls that raised, by error type",
                    ["provider", "error_type"], registry=None),
        "latency": h("aiecs_provider_call_duration_seconds", "Latency of one provider call",
                     ["provider", "operation"], buckets=CALL_BUCKETS, registry=None),
        "in_flight": g("aiecs_provider_calls_in_flight", "Provider calls in flight",
                       ["provider"], multiprocess_mode="liveall", registry=None),
        "tokens": c("aiecs_provider_tokens_total", "Tokens used, by direction (input/output)",
                    ["provider", "model", "direction"], registry=None),
        "cost": c("aiecs_provider_cost_usd_total", "Priced cost of provider calls (USD)",
                  ["provider", "model"], registry=None),
        "rl_waits": c("aiecs_provider_rate_limit_waits_total",
                      "Sleeps waiting for rate-limit capacity", ["provider"], registry=None),
        "rl_seconds": c("aiecs_provider_rate_limit_wait_seconds_total",
                        "Seconds slept waiting for rate-limit capacity", ["provider"],
                        registry=None),
        "quota_refusals": c("aiecs_quota_refusals_total",
                            "Submissions refused by a per-user quota, by its setting",
                            ["setting"], registry=None),
        "budget_refusals": c("aiecs_budget_refusals_total",
                             "Submissions refused by a per-user budget, by period and kind",
                             ["period", "kind"], registry=None),
        "sockets": g("aiecs_server_connected_sockets", "Authenticated Socket.IO connections",
                     multiprocess_mode="livesum", registry=None),
        "delivered": c("aiecs_server_events_delivered_total",
                       "Live event packets sent to sockets", registry=None),
        "replays": c("aiecs_server_replays_total", "Subscribes answered with a replay",
                     registry=None),
        "replayed": c("aiecs_server_replayed_events_total", "Events sent by replays",
                      registry=None),
        "restarts": c("aiecs_server_listener_restarts_total",
                      "Pub/sub listener restarts", registry=None),
        "background": c("aiecs_background_failures_total",
                        "Failures of background loops that retry, by kind", ["kind"],
                        registry=None),
    }


#: Every metric name this module exports (counters without their ``_total``-less alias).
METRIC_NAMES = (
    "celery_task_executions_total", "celery_task_duration_seconds", "celery_active_tasks",
    "aiecs_provider_requests_total", "aiecs_provider_errors_total",
    "aiecs_provider_call_duration_seconds", "aiecs_provider_calls_in_flight",
    "aiecs_provider_tokens_total", "aiecs_provider_cost_usd_total",
    "aiecs_provider_rate_limit_waits_total", "aiecs_provider_rate_limit_wait_seconds_total",
    "aiecs_quota_refusals_total", "aiecs_budget_refusals_total",
    "aiecs_server_connected_sockets", "aiecs_server_events_delivered_total",
    "aiecs_server_replays_total", "aiecs_server_replayed_events_total",
    "aiecs_server_listener_restarts_total", "aiecs_background_failures_total",
)


class _Metrics:
    def __init__(self, objects: dict[str, Any]):
        self.objects = objects
        self.__dict__.update(objects)


def load() -> Any:
    """Create the metrics in this process (once; idempotent, thread-safe) and return them.

    Values go to ``PROMETHEUS_MULTIPROC_DIR`` when it is set (one file per process,
    aggregated by whoever serves them), else they stay in this process. Call it off the
    event loop: importing prometheus_client takes a while.
    """
    global _m
    if _m is not None:
        return _m
    with _lock:
        if _m is None:
            # prometheus_client on first use: processes that keep no metrics never import it
            import prometheus_client as prom
            from prometheus_client import values

            # Follow PROMETHEUS_MULTIPROC_DIR as it is now (it may have been set after
            # prometheus_client was first imported).
            values.ValueClass = values.get_value_class()
            _m = _Metrics(_define(prom))
    return _m


def loaded() -> bool:
    return _m is not None


def _child(metric: str, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached (prometheus_client validates and locks on each
    call: this is a dict lookup)."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = getattr(_m, metric).labels(*labels)
    return child


def _bounded(kind: str, value: str) -> str:
    seen = _labels[kind]
    if value in seen:
        return value
    with _lock:
        if len(seen) < MAX_LABEL_VALUES:
            seen.add(value)
            return value
    return "other"


# -- executions (aiecs_worker.runner.runtime, aiecs_worker.store.records) -------------------------
def submitted(task_name: str) -> None:
    """An execution was queued (counted where it was submitted)."""
    if _m is not None:
        _child("executions", _bounded("task_name", task_name), "pending").inc()


def started(task_name: str) -> None:
    """An operation starts running."""
    if _m is not None:
        _child("executions", _bounded("task_name", task_name), "running").inc()
        _m.active.inc()


def stopped() -> None:
    """An operation stopped running (whatever its outcome)."""
    if _m is not None:
        _m.active.dec()


def finished(task_name: str, status: str, began: float | None) -> None:
    """An execution's outcome was recorded; ``began`` is its ``time.monotonic()`` start."""
    if _m is not None:
        name = _bounded("task_name", task_name)
        _child("executions", name, status).inc()
        if began is not None:
            _child("duration", name).observe(time.monotonic() - began)


# -- provider calls (aiecs_worker.runner.runtime, aiecs_worker.runner.ratelimit) ------------------
async def provider_call(instance: Any, operation: str, ctx: Any, call: Any) -> Any:
    """Await ``call`` (one attempt of ``operation`` on a service ``instance``), counting it:
    the request, its latency, calls in flight, its error type, the usage it recorded."""
    m = _m
    if m is None:
        return await call
    cls = type(instance)
    provider = cls.provider or cls.name
    recorded = len(ctx.usage)
    in_flight = _child("in_flight", provider)
    in_flight.inc()
    t0 = time.monotonic()
    try:
        return await call
    except Exception as exc:
        kind = type(exc).__name__ if isinstance(exc, AiecsError) else "OperationError"
        _child("errors", provider, kind).inc()
        raise
    finally:
        in_flight.dec()
        _child("requests", provider, operation).inc()
        _child("latency", provider, operation).observe(time.monotonic() - t0)
        for usage in ctx.usage[recorded:]:
            _usage(usage)


def _usage(usage: Any) -> None:
    model = _bounded("model", usage.model)
    if usage.input_tokens:
        _child("tokens", usage.provider, model, "input").inc(usage.input_tokens)
    if usage.output_tokens:
        _child("tokens", usage.provider, model, "output").inc(usage.output_tokens)
    if usage.cost:
        _child("cost", usage.provider, model).inc(usage.cost)


def rate_limit_wait(provider: str, seconds: float) -> None:
    """A call sleeps ``seconds`` waiting for rate-limit capacity."""
    if _m is not None:
        _child("rl_waits", provider).inc()
        _child("rl_seconds", provider).inc(seconds)


# -- progress server (aiecs_worker.server.realtime) -----------------------------------------
def quota_refused(setting: str) -> None:
    """A per-user quota refused a submission (``setting`` names it: a fixed set)."""
    if _m is not None:
        _child("quota_refusals", setting).inc()


def budget_refused(period: str, kind: str) -> None:
    """A per-user budget refused a submission (``day``/``month``, ``usd``/``tokens``)."""
    if _m is not None:
        _child("budget_refusals", period, kind).inc()


def socket_connected(delta: int) -> None:
    if _m is not None:
        _m.sockets.inc(delta)


def delivered(packets: int) -> None:
    if _m is not None and packets:
        _m.delivered.inc(packets)


def replayed(events: int) -> None:
    if _m is not None:
        _m.replays.inc()
        _m.replayed.inc(events)


def listener_restarted() -> None:
    if _m is not None:
        _m.restarts.inc()


# -- background loops (aiecs_worker.ops.background) ------------------------------------------------
def background_failure(kind: str) -> None:
    """A background loop failed once (``kind`` is one of a fixed few, not user-chosen)."""
    if _m is not None:
        _child("background", kind).inc()
