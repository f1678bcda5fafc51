"""The Redis manager of the progress server's Socket.IO: events published by the workers
reach every server process through it, and its listener proves it is alive.

The events are published by Lua scripts on the state Redis, so the manager subscribes
there; on a Redis Cluster, to one node at a time, another when that one dies
(:class:`~aiecs_worker.store.connection.PubSubNodes`)."""

from __future__ import annotations

import json
import time

import socketio

from ..ops import metrics
from ..settings import RedisTarget
from ..store.connection import PubSubNodes, pubsub_client

__all__ = ["ProbedRedisManager"]

_PROBE_PREFIX = b'{"method": "aiecs_probe", '


class ProbedRedisManager(socketio.AsyncRedisManager):
    """An ``AsyncRedisManager`` whose pub/sub listener proves it is alive.

    The server periodically publishes a probe on the manager's channel; the listener
    swallows it and records when it arrived. A listener that stopped receiving (Redis
    gone, connection half-open, task dead) stops seeing probes, so ``/healthz`` can say so
    instead of reporting a silently dead listener as healthy.
    """

    def __init__(self, url: str | RedisTarget, channel: str):
        super().__init__(
            url.url if isinstance(url, RedisTarget) else url,
            channel=channel,
            redis_options={
                "socket_connect_timeout": 2,
                "socket_keepalive": True,
                "health_check_interval": 10,
            },
        )
        self.probe_heard: dict[str, float] = {}
        self.target = url
        #: on a Redis Cluster, the node to subscribe to (the server tells it the nodes)
        self.nodes = (PubSubNodes(url) if isinstance(url, RedisTarget) and url.cluster
                      else None)

    def _redis_connect(self):
        """The client through aiecs's one factory (plain or Sentinel URL), in place of
        python-socketio's, which knows only its own ``redis+sentinel://`` form."""
        if self.nodes is not None:  # each (re)connection: the next node after a failure
            self.redis = self.nodes.client(**self.redis_options)
        else:
            self.redis = pubsub_client(self.target, **self.redis_options)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True

    async def _listen(self):
        async for data in super()._listen():
            if isinstance(data, bytes) and data.startswith(_PROBE_PREFIX):
                try:
                    nonce = json.loads(data)["nonce"]
                except (ValueError, KeyError, TypeError):
                    continue
                self.probe_heard[nonce] = time.monotonic()
                if len(self.probe_heard) > 64:
                    for old in sorted(self.probe_heard, key=self.probe_heard.get)[:32]:
                        self.probe_heard.pop(old, None)
                continue
            yield data

    async def _handle_emit(self, message):
        room = self.rooms.get(message.get("namespace") or "/", {}).get(message.get("room"))
        metrics.delivered(len(room) if room else 0)
        await super()._handle_emit(message)

    @staticmethod
    def probe_packet(nonce: str) -> bytes:
        return _PROBE_PREFIX + f'"nonce": {json.dumps(nonce)}}}'.encode()
