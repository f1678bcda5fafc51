"""The Celery application.

``celery -A aiecs_worker worker`` finds ``aiecs_worker.app``. Settings come from the
environment (:mod:`aiecs_worker.settings`); an invalid value stops the process at import
with a message naming the variable: under a command (``celery -A aiecs_worker ...``,
``aiecs ...``) as one line on stderr and exit code 2, not a traceback; imported by a
program, as a :class:`~aiecs_core.ConfigurationError`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aiecs_core import ConfigurationError
from celery import Celery
from kombu import Exchange, Queue

from .ops import tracing
from .routing import FAST_QUEUE, HEAVY_QUEUE, MAX_PRIORITY, task_routes
from .settings import Settings, get_settings
from .store import results
from .store.connection import celery_sentinel_options, redbeat_options
from .store.keys import BEAT_PREFIX

__all__ = ["app", "create_app"]


def create_app(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    # One record, not two: results read from the executions' terminal records when the
    # result backend is the state Redis (aiecs_worker.store.results)
    backend = results.backend_url(s.result_backend) if s.one_result_record else s.result_backend
    celery_app = Celery("aiecs", broker=s.celery_broker_url, backend=backend)
    # A dead worker's received-but-unstarted messages come back after the visibility
    # timeout (5 min by default: redelivered copies are harmless, see lease.py); kombu
    # looks for them every 30 s instead of every 100 s.
    transport = {"visibility_timeout": s.celery_visibility_timeout,
                 "unacked_restore_interval": 10, "unacked_restore_throttle": 3}
    # Redis Sentinel (Celery's `sentinel://h1;sentinel://h2` URLs): the master's name and
    # the sentinels' password (see aiecs_worker.store.connection)
    broker_options = {**transport,
                      **celery_sentinel_options(s.redis_target(s.celery_broker_url))}
    backend_options = {**transport,
                       **celery_sentinel_options(s.redis_target(s.result_backend))}
    beat_url, beat_options = redbeat_options(s.redis_target(s.beat_redis_url))
    if s.broker_is_amqp:
        # RabbitMQ has no visibility timeout: an unacknowledged message returns to its
        # queue when its consumer's connection closes. Publisher confirms: a submission
        # returns once the broker has taken the message (durable queue, persistent
        # message), so a message is never lost in transit (see aiecs_worker.store.lease).
        broker_options = {"confirm_publish": True}
    celery_app.conf.update(
        # JSON only: no pickle anywhere, in either direction.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A task is acknowledged after it ran; a lost worker's task is redelivered
        # (redeliveries are bounded by AIECS_MAX_DELIVERIES in the runner).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_soft_time_limit=s.celery_task_soft_time_limit,
        task_time_limit=s.celery_task_time_limit,
        broker_transport_options=broker_options,
        # A submission subscribes to its result (Celery's Redis result consumer) before
        # it publishes; with Redis away that subscription retried for 19 s (20 tries,
        # 1 s apart) before the caller heard of it. Bounded at 5 s: a Redis restart is
        # ridden out, an outage is an error (a 503 from the server) within seconds. The
        # worker's own result writes still retry (result_backend_always_retry below).
        result_backend_transport_options={**backend_options, "retry_policy": {
            "max_retries": 20, "interval_start": 0, "interval_step": 0.5,
            "interval_max": 1, "timeout": 5}},
        worker_prefetch_multiplier=s.celery_worker_prefetch_multiplier,
        task_queues=(
            Queue(FAST_QUEUE, Exchange(FAST_QUEUE), routing_key=FAST_QUEUE,
                  max_priority=MAX_PRIORITY),
            Queue(HEAVY_QUEUE, Exchange(HEAVY_QUEUE), routing_key=HEAVY_QUEUE,
                  max_priority=MAX_PRIORITY),
        ),
        task_default_queue=FAST_QUEUE,
        task_routes=task_routes(),
        task_track_started=False,
        result_expires=s.aiecs_events_ttl,
        broker_connection_retry_on_startup=True,
        # A result store that meets a Redis restart or pause retries instead of failing.
        result_backend_always_retry=True,
        result_backend_max_retries=20,
        # Celery's task events (Flower, `celery events`): AIECS_TASK_EVENTS, or `-E`.
        worker_send_task_events=s.aiecs_task_events,
        task_send_sent_event=s.aiecs_task_events,
        # Beat: celery-redbeat's scheduler, entries (users' schedules) in the state Redis,
        # looked at every 5 s at most; see aiecs_worker.runner.beat.
        beat_scheduler="aiecs_worker.runner.beat:Scheduler",
        beat_max_loop_interval=5,
        redbeat_redis_url=beat_url,
        redbeat_redis_options=beat_options,
        redbeat_key_prefix=BEAT_PREFIX,
    )
    if s.aiecs_tracing:
        tracing.install()  # the trace context travels in every message this process sends
    if s.celery_worker_concurrency is not None:
        celery_app.conf.worker_concurrency = s.celery_worker_concurrency
    return celery_app


def run_as_command(argv: list[str] | None = None) -> bool:
    """Whether this process is the ``celery`` or ``aiecs`` command (a script, or ``python -m
    celery`` / ``python -m aiecs_worker.cli``), where a bad setting is a line for a person,
    not a traceback. ``argv`` is the interpreter's own (``sys.orig_argv``): while ``-m``
    imports its package, ``sys.argv[0]`` is only ``"-m"``."""
    args = list(sys.orig_argv if argv is None else argv)[1:]
    for i, arg in enumerate(args):
        if arg == "-m":
            return i + 1 < len(args) and args[i + 1] in ("celery", "aiecs_worker.cli")
        if arg in ("-c", "-"):
            return False
        if not arg.startswith("-"):
            return Path(arg).name in ("celery", "aiecs")
    return False


try:
    app = create_app()
except ConfigurationError as _exc:
    if not run_as_command():
        raise
    print(f"aiecs: {_exc.message}", file=sys.stderr)
    raise SystemExit(2) from None
