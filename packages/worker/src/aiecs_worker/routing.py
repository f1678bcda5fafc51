"""Where an execution goes: queue names, Celery task names, priorities and the one router.

Every place that picks a queue, a task name or a priority asks :func:`route` (the
Celery app's ``task_routes``, submissions, batches, workflows, schedules, the HTTP API).
The task names are the wire format (a queued message and a stored schedule name them):
they never change. This module imports nothing from aiecs_worker.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["AIECS_TASKS", "FAST_QUEUE", "FAST_TASK", "FLOW_HEAVY_TASK", "FLOW_TASK",
           "FLOW_TASKS", "HEAVY_QUEUE", "HEAVY_TASK", "MAX_PRIORITY", "Route", "queue_name",
           "queue_of_task", "route", "task_routes"]

FAST_QUEUE = "fast_tasks"
HEAVY_QUEUE = "heavy_tasks"
FAST_TASK = "aiecs.tasks.worker.execute_task"
HEAVY_TASK = "aiecs.tasks.worker.execute_heavy_task"
#: A workflow step: execute_task / execute_heavy_task, then the workflow advances.
FLOW_TASK = "aiecs.tasks.worker.execute_flow_step"
FLOW_HEAVY_TASK = "aiecs.tasks.worker.execute_heavy_flow_step"
#: The tasks that run one execution (a message of any of them carries a TaskRequest).
AIECS_TASKS = (FAST_TASK, HEAVY_TASK, FLOW_TASK, FLOW_HEAVY_TASK)
#: The tasks after which a workflow advances.
FLOW_TASKS = (FLOW_TASK, FLOW_HEAVY_TASK)
#: Highest message priority of the queues (RabbitMQ's ``x-max-priority``; higher runs
#: first there). kombu's Redis transport ignores it and keeps its own 0 (first) .. 9.
MAX_PRIORITY = 10
_FAST_PRIORITY = 10
_HEAVY_PRIORITY = 5
_HEAVY_TASKS = (HEAVY_TASK, FLOW_HEAVY_TASK)


class Route(NamedTuple):
    """(Celery task name, queue, priority) of an execution."""

    task: str
    queue: str
    priority: int


def route(heavy: bool, *, flow: bool = False) -> Route:
    """The route of an execution: heavy or not, a workflow step or not."""
    if heavy:
        return Route(FLOW_HEAVY_TASK if flow else HEAVY_TASK, HEAVY_QUEUE, _HEAVY_PRIORITY)
    return Route(FLOW_TASK if flow else FAST_TASK, FAST_QUEUE, _FAST_PRIORITY)


def queue_name(heavy: bool) -> str:
    """The queue of a heavy (or not) execution."""
    return route(heavy).queue


def queue_of_task(task: str) -> str:
    """The queue a message of Celery task ``task`` goes to by default."""
    return route(task in _HEAVY_TASKS, flow=task in FLOW_TASKS).queue


def task_routes() -> dict[str, dict[str, object]]:
    """Celery's ``task_routes``: every execution task to its queue and priority."""
    out: dict[str, dict[str, object]] = {}
    for heavy in (False, True):
        for flow in (False, True):
            r = route(heavy, flow=flow)
            out[r.task] = {"queue": r.queue, "priority": r.priority}
    return out
