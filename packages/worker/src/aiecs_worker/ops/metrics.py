"""Prometheus metrics of the worker and the progress server: what they count, and where.

Every hook here is one call at its site and costs a counter increment or two. A process
records nothing until it has loaded the metrics (:func:`load`) for its role: a worker's
processes as the worker starts (``load("worker")``), the progress server as it starts
(``load("server")``); a script that only submits tasks never imports prometheus_client,
and what it submits is still counted (by the worker that begins it). Each role exports
only the families that mean something there (a worker exports no socket gauge, the
server no provider latency). Exposition (the HTTP endpoints, the prefork and
multi-process aggregation, the gauges read from Redis at scrape time) is
:mod:`aiecs_worker.ops.metrics_http` and :mod:`aiecs_worker.store.gauges`.

Executions (worker and server), the specification's three (section 6.4) with its
``task_name`` label replaced by ``queue``, ``mode``, ``service``, ``operation`` (the
specification's ``task_name`` is the ``operation``; none of its queries select on it).
Label values are declared names only: a ``(mode, service, operation)`` the plugin registry
does not declare counts as ``unknown`` in all three, a queue the worker does not consume as
``unknown``, so made-up names in raw Celery calls create no series. Every status of every
declared ``(queue, mode, service, operation)`` is pre-set to 0 when the process loads its
metrics, so the first count shows in ``rate()`` and ``increase()``:

- ``celery_task_executions_total{queue,mode,service,operation,status}``: one count per
  status event in the executions' event logs. ``pending`` is counted once per execution
  recorded PENDING, whoever submitted it: by the worker at its first delivery (the
  ``begin`` transition sees the PENDING record), or, for one ended before any worker began
  it (a cancel, a release failure), by the process that ended it (the terminal transition
  sees it); ``running`` when the begin transition starts the operation (and publishes
  RUNNING: a delivery refused there, out of deliveries or cancelled, is not counted);
  the terminal status (``completed``, ``failed``, ``timed_out``, ``cancelled``) by the
  process that recorded it. A process that loaded no metrics counts nothing (a script
  cancelling an execution held in Redis ends it itself: its pending and cancelled go
  uncounted);
- ``celery_task_duration_seconds{queue,mode,service,operation}`` (worker): from the worker
  receiving an execution to its recorded outcome. Its 95th percentile over the fleet is
  ``histogram_quantile(0.95, sum by (le) (rate(celery_task_duration_seconds_bucket[5m])))``
  (the specification's ``histogram_quantile(0.95, rate(...))`` gives one series per
  instance and label set);
- ``celery_active_tasks`` (worker): operations running now (summed over live processes);
- ``aiecs_execution_redeliveries_total{queue}`` (worker): deliveries of an execution a
  worker had already begun (its worker was lost, its lease ended; docs/reliability.md).

Provider calls (worker; one per attempt of an operation), labelled by the service's provider
name (``openai``, ``vertex``, ``xai``, ...) and ``operation``; tokens and cost by
``provider`` and ``model`` from the usage each call recorded:
``aiecs_provider_requests_total``, ``aiecs_provider_errors_total{error_type}``,
``aiecs_provider_call_duration_seconds``, ``aiecs_provider_calls_in_flight`` (per process:
a ``pid`` label under multi-process aggregation), ``aiecs_provider_tokens_total{direction}``
(``input``/``output``), ``aiecs_provider_cost_usd_total``,
``aiecs_provider_rate_limit_waits_total`` and ``..._wait_seconds_total`` (each sleep
waiting for cluster-wide capacity, ``AIECS_RATE_LIMITS``).

Events (worker, :mod:`aiecs_worker.store.events`): ``aiecs_events_dropped_total`` (progress
and stream events dropped while Redis was unreachable) and ``aiecs_events_retried_total``
(sends of terminal transitions retried until Redis answered).

Quotas (worker and server: both submit; :mod:`aiecs_worker.store.quotas`):
``aiecs_quota_refusals_total{setting}``, submissions refused, labelled by the environment
variable of the quota (a fixed set).

Budgets (worker and server, :mod:`aiecs_worker.store.budgets`):
``aiecs_budget_refusals_total{period,kind}``,
submissions refused by a user's hard limit (``day``/``month``, ``usd``/``tokens``).

Progress server: ``aiecs_server_connected_sockets``, ``aiecs_server_events_delivered_total``
(packets of live events sent to sockets), ``aiecs_server_replays_total`` and
``aiecs_server_replayed_events_total``, ``aiecs_server_listener_restarts_total``.

Background work (worker, :mod:`aiecs_worker.ops.background`):
``aiecs_background_failures_total{kind}``, each failure of a loop that runs unattended and
retries (``lease``: the lease renewal and sweep loop; ``workflow_sweep``: advancing one
workflow a process left behind; ``workflow_advance``: advancing a workflow after its step;
``workflow_release``: releasing a step whose inputs are ready).

Read from Redis when the worker's metrics server is scraped (:mod:`aiecs_worker.store.gauges`;
every worker reports the same value: aggregate with ``max``, not ``sum``):
``aiecs_queue_depth{queue}`` (messages waiting, kombu's priority lists summed),
``aiecs_pending_executions`` (``aiecs:pending``), ``aiecs_deadletter_length``
(``aiecs:deadletter``), ``aiecs_redis_up{role}`` (``broker``, ``state``: 1 when it answered).
``aiecs_process_resident_memory_bytes{pid}``: see :mod:`aiecs_worker.ops.metrics_http`.

The ``model`` label (user-chosen) is bounded: past :data:`MAX_LABEL_VALUES` distinct values
in one process, new ones count as ``other``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from aiecs_core import AiecsError, TaskStatus

__all__ = ["MAX_LABEL_VALUES", "METRIC_NAMES", "ROLES", "UNKNOWN", "families", "load",
           "loaded", "role"]

#: Distinct values one user-chosen label takes in a process before new ones become "other".
MAX_LABEL_VALUES = 200
#: The label value of a name nothing declares.
UNKNOWN = "unknown"
#: Buckets of task durations (s): AI calls take from tens of milliseconds to minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Buckets of one provider call's latency (s).
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_EXEC = ["queue", "mode", "service", "operation"]
#: The background loops that count their failures (aiecs_worker.ops.background).
BACKGROUND_KINDS = ("lease", "workflow_sweep", "workflow_advance", "workflow_release")
_STATUSES = tuple(s.value for s in TaskStatus)

#: The families of each role (keys of :func:`_define`).
ROLES: dict[str, tuple[str, ...]] = {
    "worker": ("executions", "duration", "active", "redeliveries", "requests", "errors",
               "latency", "in_flight", "tokens", "cost", "rl_waits", "rl_seconds",
               "events_dropped", "events_retried", "quota_refusals", "budget_refusals",
               "background"),
    "server": ("executions", "quota_refusals", "budget_refusals", "sockets", "delivered",
               "replays", "replayed", "restarts"),
    # the history recorder's process: its families go here when it counts something
    "recorder": (),
}

_m: Any = None  # the metric objects (a namespace), once loaded
_role: str | None = None
_lock = threading.Lock()
_labels: dict[str, set[str]] = {"model": set()}
_children: dict[tuple[str, tuple[str, ...]], Any] = {}
_queues: frozenset[str] = frozenset()
_operations: frozenset[tuple[str, str, str]] | None = None


def _define(prom: Any, names: Iterable[str]) -> dict[str, Any]:
    c, g, h = prom.Counter, prom.Gauge, prom.Histogram
    make = {
        "executions": lambda: c("celery_task_executions_total", "Task executions by status",
                                [*_EXEC, "status"], registry=None),
        "duration": lambda: h("celery_task_duration_seconds", "Task execution duration",
                              _EXEC, buckets=DURATION_BUCKETS, registry=None),
        "active": lambda: g("celery_active_tasks", "Operations running now",
                            multiprocess_mode="livesum", registry=None),
        "redeliveries": lambda: c("aiecs_execution_redeliveries_total",
                                  "Deliveries of executions a worker had already begun",
                                  ["queue"], registry=None),
        "requests": lambda: c("aiecs_provider_requests_total",
                              "Provider calls (operation attempts)", ["provider", "operation"],
                              registry=None),
        "errors": lambda: c("aiecs_provider_errors_total",
                            "Provider calls that raised, by error type",
                            ["provider", "error_type"], registry=None),
        "latency": lambda: h("aiecs_provider_call_duration_seconds",
                             "Latency of one provider call", ["provider", "operation"],
                             buckets=CALL_BUCKETS, registry=None),
        "in_flight": lambda: g("aiecs_provider_calls_in_flight", "Provider calls in flight",
                               ["provider"], multiprocess_mode="liveall", registry=None),
        "tokens": lambda: c("aiecs_provider_tokens_total",
                            "Tokens used, by direction (input/output)",
                            ["provider", "model", "direction"], registry=None),
        "cost": lambda: c("aiecs_provider_cost_usd_total", "Priced cost of provider calls (USD)",
                          ["provider", "model"], registry=None),
        "rl_waits": lambda: c("aiecs_provider_rate_limit_waits_total",
                              "Sleeps waiting for rate-limit capacity", ["provider"],
                              registry=None),
        "rl_seconds": lambda: c("aiecs_provider_rate_limit_wait_seconds_total",
                                "Seconds slept waiting for rate-limit capacity", ["provider"],
                                registry=None),
        "events_dropped": lambda: c("aiecs_events_dropped_total",
                                    "Progress and stream events dropped (Redis unreachable)",
                                    registry=None),
        "events_retried": lambda: c("aiecs_events_retried_total",
                                    "Sends of terminal transitions retried (Redis unreachable)",
                                    registry=None),
        "quota_refusals": lambda: c("aiecs_quota_refusals_total",
                                    "Submissions refused by a per-user quota, by its setting",
                                    ["setting"], registry=None),
        "budget_refusals": lambda: c("aiecs_budget_refusals_total",
                                     "Submissions refused by a per-user budget, by period "
                                     "and kind", ["period", "kind"], registry=None),
        "sockets": lambda: g("aiecs_server_connected_sockets",
                             "Authenticated Socket.IO connections",
                             multiprocess_mode="livesum", registry=None),
        "delivered": lambda: c("aiecs_server_events_delivered_total",
                               "Live event packets sent to sockets", registry=None),
        "replays": lambda: c("aiecs_server_replays_total", "Subscribes answered with a replay",
                             registry=None),
        "replayed": lambda: c("aiecs_server_replayed_events_total", "Events sent by replays",
                              registry=None),
        "restarts": lambda: c("aiecs_server_listener_restarts_total",
                              "Pub/sub listener restarts", registry=None),
        "background": lambda: c("aiecs_background_failures_total",
                                "Failures of background loops that retry, by kind", ["kind"],
                                registry=None),
    }
    return {name: make[name]() for name in names}


#: Every metric name a process of aiecs exports (counters without their ``_total``-less
#: alias), the gauges read at scrape time (aiecs_worker.store.gauges) included.
METRIC_NAMES = (
    "celery_task_executions_total", "celery_task_duration_seconds", "celery_active_tasks",
    "aiecs_execution_redeliveries_total",
    "aiecs_provider_requests_total", "aiecs_provider_errors_total",
    "aiecs_provider_call_duration_seconds", "aiecs_provider_calls_in_flight",
    "aiecs_provider_tokens_total", "aiecs_provider_cost_usd_total",
    "aiecs_provider_rate_limit_waits_total", "aiecs_provider_rate_limit_wait_seconds_total",
    "aiecs_events_dropped_total", "aiecs_events_retried_total",
    "aiecs_quota_refusals_total", "aiecs_budget_refusals_total",
    "aiecs_server_connected_sockets", "aiecs_server_events_delivered_total",
    "aiecs_server_replays_total", "aiecs_server_replayed_events_total",
    "aiecs_server_listener_restarts_total", "aiecs_background_failures_total",
    "aiecs_queue_depth", "aiecs_pending_executions", "aiecs_deadletter_length",
    "aiecs_redis_up", "aiecs_process_resident_memory_bytes",
)


class _Metrics:
    def __init__(self, objects: dict[str, Any]):
        self.objects = objects
        self.__dict__.update(objects)

    def __getattr__(self, name: str) -> Any:  # a family this role does not export
        return None


class _Noop:
    """The child of a family this process's role does not export: counts nothing."""

    def inc(self, *_: Any) -> None: ...
    def dec(self, *_: Any) -> None: ...
    def observe(self, *_: Any) -> None: ...


_NOOP = _Noop()


def load(role: str = "worker", *, queues: Iterable[str] = ()) -> Any:
    """Create this process's metrics for ``role`` (a key of :data:`ROLES`) once (idempotent,
    thread-safe; a later call returns them whatever its arguments) and return them.

    ``queues``: the queues whose executions this process counts (any other counts as
    ``unknown``). Every status of every declared ``(queue, mode, service, operation)`` is
    set to 0 here. Values go to ``PROMETHEUS_MULTIPROC_DIR`` when it is set (one file per
    process, aggregated by whoever serves them), else they stay in this process. Call it
    off the event loop: importing prometheus_client and the plugins takes a while.
    """
    global _m, _role, _queues
    if _m is not None:
        return _m
    if role not in ROLES:
        raise ValueError(f"unknown metrics role {role!r}; one of {', '.join(ROLES)}")
    with _lock:
        if _m is None:
            # prometheus_client on first use: processes that keep no metrics never import it
            import prometheus_client as prom
            from prometheus_client import values

            # Follow PROMETHEUS_MULTIPROC_DIR as it is now (it may have been set after
            # prometheus_client was first imported).
            values.ValueClass = values.get_value_class()
            _queues = frozenset(queues)
            m = _Metrics(_define(prom, ROLES[role]))
            _zero(m)
            _role = role
            _m = m
    return _m


def _declared() -> frozenset[tuple[str, str, str]]:
    """Every ``(mode, service, operation)`` the plugin registry declares (read once)."""
    global _operations
    if _operations is None:
        from aiecs_core import load_plugins

        registry = load_plugins()
        _operations = frozenset(
            (mode, service, op) for mode, service in registry.keys()
            for op in registry.service_class(mode, service).operations)
    return _operations


def _zero(m: _Metrics) -> None:
    """Every status of every declared label set at 0 (its first count then shows in
    ``rate()``), and the unknown ones."""
    if m.executions is None:
        return
    operations = [*sorted(_declared()), (UNKNOWN,) * 3]
    sets = [(q, *op) for q in (*sorted(_queues), UNKNOWN) for op in operations]
    for labels in sets:
        for status in _STATUSES:
            m.executions.labels(*labels, status)
        if m.duration is not None:
            m.duration.labels(*labels)
    if m.redeliveries is not None:
        for q in (*sorted(_queues), UNKNOWN):
            m.redeliveries.labels(q)
    if m.requests is not None:  # the worker's provider families: each declared call
        for provider, operation in sorted(_providers()):
            m.requests.labels(provider, operation)
            m.latency.labels(provider, operation)
        for provider in sorted({p for p, _ in _providers()}):
            m.in_flight.labels(provider)
            m.rl_waits.labels(provider)
            m.rl_seconds.labels(provider)
    if m.background is not None:
        for kind in BACKGROUND_KINDS:
            m.background.labels(kind)


def _providers() -> set[tuple[str, str]]:
    """Every declared ``(provider, operation)`` (a service's provider name, else its name)."""
    from aiecs_core import load_plugins

    registry = load_plugins()
    out = set()
    for mode, service in registry.keys():
        cls = registry.service_class(mode, service)
        out |= {(cls.provider or cls.name, op) for op in cls.operations}
    return out


def loaded() -> bool:
    return _m is not None


def role() -> str | None:
    """The role this process loaded its metrics for (None: not loaded)."""
    return _role


def families() -> tuple[str, ...]:
    """The metric names this process exports (by its role)."""
    return tuple(metric._name for metric in (_m.objects.values() if _m else ()))


def _child(metric: str, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached (prometheus_client validates and locks on each
    call: this is a dict lookup); a no-op for a family this role does not export."""
    key = (metric, labels)
    child = _children.get(key)
    if child is None:
        family = getattr(_m, metric)
        child = _children[key] = _NOOP if family is None else family.labels(*labels)
    return child


def _unlabelled(metric: str) -> Any:
    family = getattr(_m, metric)
    return _NOOP if family is None else family


def _bounded(kind: str, value: str) -> str:
    seen = _labels[kind]
    if value in seen:
        return value
    with _lock:
        if len(seen) < MAX_LABEL_VALUES:
            seen.add(value)
            return value
    return "other"


def execution_labels(queue: str, mode: str, service: str, operation: str
                     ) -> tuple[str, str, str, str]:
    """The labels of an execution: declared names, else ``unknown``."""
    q = queue if queue in _queues else UNKNOWN
    if (mode, service, operation) in _declared():
        return q, mode, service, operation
    return q, UNKNOWN, UNKNOWN, UNKNOWN


# -- executions (aiecs_worker.runner.execution, aiecs_worker.store.records) ---------------------
def pending(queue: str, mode: str, service: str, operation: str) -> None:
    """An execution recorded PENDING is counted (once: see the module's docstring)."""
    if _m is not None:
        _child("executions", *execution_labels(queue, mode, service, operation),
               "pending").inc()


def started(queue: str, mode: str, service: str, operation: str) -> None:
    """An operation starts running."""
    if _m is not None:
        _child("executions", *execution_labels(queue, mode, service, operation),
               "running").inc()
        if _m.active is not None:
            _m.active.inc()


def stopped() -> None:
    """An operation stopped running (whatever its outcome)."""
    if _m is not None and _m.active is not None:
        _m.active.dec()


def finished(queue: str, mode: str, service: str, operation: str, status: str,
             began: float | None) -> None:
    """An execution's outcome was recorded; ``began`` is its ``time.monotonic()`` start."""
    if _m is not None:
        labels = execution_labels(queue, mode, service, operation)
        _child("executions", *labels, status).inc()
        if began is not None:
            _child("duration", *labels).observe(time.monotonic() - began)


def redelivered(queue: str) -> None:
    """A worker begins an execution a worker had already begun."""
    if _m is not None:
        _child("redeliveries", queue if queue in _queues else UNKNOWN).inc()


# -- events (aiecs_worker.store.events) -----------------------------------------------------------
def events_dropped(count: int) -> None:
    if _m is not None and count and _m.events_dropped is not None:
        _m.events_dropped.inc(count)


def events_retried(count: int) -> None:
    if _m is not None and count and _m.events_retried is not None:
        _m.events_retried.inc(count)


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
        _unlabelled("sockets").inc(delta)


def delivered(packets: int) -> None:
    if _m is not None and packets:
        _unlabelled("delivered").inc(packets)


def replayed(events: int) -> None:
    if _m is not None:
        _unlabelled("replays").inc()
        _unlabelled("replayed").inc(events)


def listener_restarted() -> None:
    if _m is not None:
        _unlabelled("restarts").inc()


# -- background loops (aiecs_worker.ops.background) ------------------------------------------------
def background_failure(kind: str) -> None:
    """A background loop failed once (``kind`` is one of a fixed few, not user-chosen)."""
    if _m is not None:
        _child("background", kind).inc()
