"""The gauges a worker's metrics page reads from Redis when it is scraped.

- ``aiecs_queue_depth{queue}``: messages waiting in each queue. kombu's Redis transport
  keeps one list per priority step, ``<queue>`` for priority 0 and
  ``<queue>\\x06\\x16<step>`` for the others (``kombu.transport.redis.Channel._q_for_pri``;
  aiecs's messages sit in ``fast_tasks\\x06\\x169``): all of them are summed, so the depth
  is right whichever steps are configured. Absent when the broker is RabbitMQ (read its
  own queue metrics).
- ``aiecs_pending_executions``: executions recorded PENDING and not begun (the size of
  ``aiecs:pending``, what the sweeper watches).
- ``aiecs_deadletter_length``: malformed broker messages kept in ``aiecs:deadletter``
  (see aiecs_worker.runner.poison).
- ``aiecs_redis_up{role}``: 1 when the ``broker`` / ``state`` Redis answered this scrape.

One pipeline per Redis (the broker's LLENs, the state's ZCARD and LLEN), with a short
timeout: a scrape costs two round trips and never hangs on a Redis that is away. Every
worker reports the same values: aggregate with ``max``, not ``sum``.
"""

from __future__ import annotations

import functools
from typing import Any

import redis

from ..ops.metrics_http import scrape_collector
from ..routing import FAST_QUEUE, HEAVY_QUEUE
from ..settings import get_settings
from .connection import sync_client
from .keys import DEADLETTER_KEY, SHARD_PREFIXES, pending_key

__all__ = ["QUEUES", "RedisGauges", "priority_lists"]

#: The queues whose depth is reported.
QUEUES = (FAST_QUEUE, HEAVY_QUEUE)
#: kombu's separator between a queue's name and its priority step (Channel.sep).
PRIORITY_SEP = "\x06\x16"
#: Every priority step kombu's Redis transport can use (its steps are a subset of 0..9).
_STEPS = range(10)
_TIMEOUT = 2.0


def priority_lists(queue: str) -> list[str]:
    """The Redis lists kombu may keep ``queue``'s messages in, one per priority step."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in _STEPS if step]


@functools.lru_cache(maxsize=4)
def _client(url: str) -> Any:
    """A client of ``url`` (plain or Sentinel, see aiecs_worker.store.connection)."""
    return sync_client(url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT)


class RedisGauges:
    """A prometheus_client collector: the gauges above, read at each scrape."""

    def collect(self):
        # prometheus_client: imported by whoever scrapes (see aiecs_worker.ops.metrics)
        from prometheus_client.core import GaugeMetricFamily

        s = get_settings()
        up = GaugeMetricFamily("aiecs_redis_up", "1 when this Redis answered the scrape",
                               labels=["role"])
        if not s.broker_is_amqp:
            depth = GaugeMetricFamily("aiecs_queue_depth",
                                      "Messages waiting, every priority list summed",
                                      labels=["queue"])
            try:
                with _client(s.celery_broker_url).pipeline(transaction=False) as pipe:
                    for queue in QUEUES:
                        for name in priority_lists(queue):
                            pipe.llen(name)
                    lengths = pipe.execute()
            except redis.RedisError:
                up.add_metric(["broker"], 0)
            else:
                up.add_metric(["broker"], 1)
                per = len(_STEPS)
                for i, queue in enumerate(QUEUES):
                    depth.add_metric([queue], sum(lengths[i * per:(i + 1) * per]))
                yield depth
        try:
            with _client(s.state_redis_url).pipeline(transaction=False) as pipe:
                for shard in SHARD_PREFIXES:
                    pipe.zcard(pending_key(shard))
                *pending_each, dead = pipe.llen(DEADLETTER_KEY).execute()
                pending = sum(pending_each)
        except redis.RedisError:
            up.add_metric(["state"], 0)
        else:
            up.add_metric(["state"], 1)
            yield GaugeMetricFamily("aiecs_pending_executions",
                                    "Executions recorded PENDING and not begun "
                                    "(aiecs:pending, every shard's)",
                                    value=pending)
            yield GaugeMetricFamily("aiecs_deadletter_length",
                                    "Malformed broker messages kept (aiecs:deadletter)",
                                    value=dead)
        yield up


scrape_collector(RedisGauges())
