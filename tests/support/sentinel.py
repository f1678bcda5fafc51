"""A real Redis Sentinel deployment on free ports: a master, a replica and three
``redis-server --sentinel`` processes watching them (quorum 2), failing over within about
two seconds of the master's death.

``.url`` is Celery's Sentinel form (``sentinel://127.0.0.1:P1;sentinel://...``), to be used
with ``AIECS_SENTINEL_MASTER=`` :data:`MASTER`; ``.client()`` talks to whichever server is
the master now. Stands in for a :class:`~tests.support.redis_server.RedisServer` where a
test only needs ``.url`` and ``.client()`` (tests/faults/harness.py).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.redis_server import RedisServer, free_port

__all__ = ["MASTER", "SentinelDeployment"]

#: The master's name in the sentinels' configuration.
MASTER = "aiecs-test"


@dataclass
class SentinelDeployment:
    #: what a sentinel's unanswered pings take to call the master down (ms)
    down_after_ms: int = 1000
    master: RedisServer = field(default_factory=RedisServer)
    replica: RedisServer = field(default_factory=RedisServer)
    ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(3)])
    procs: list[subprocess.Popen] = field(default_factory=list)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aiecs-sentinel-")))

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}/0" for p in self.ports)

    @property
    def env(self) -> dict[str, str]:
        """The environment of a process using this deployment for everything."""
        return {"CELERY_BROKER_URL": self.url, "REDIS_URL": self.url,
                "AIECS_SENTINEL_MASTER": MASTER}

    def start(self, timeout: float = 20.0) -> SentinelDeployment:
        self.master.start()
        self.replica.start()
        client = self.replica.client()
        client.replicaof("127.0.0.1", self.master.port)
        client.close()
        binary = shutil.which("redis-server")
        assert binary is not None
        for port in self.ports:
            conf = self.dir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {self.dir}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
                f"sentinel parallel-syncs {MASTER} 1\n")
            self.procs.append(subprocess.Popen(
                [binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        self.wait(self._ready, timeout, "the sentinels to see the master and its replica")
        return self

    def _ready(self) -> bool:
        import redis

        for port in self.ports:
            try:
                s = redis.Redis(port=port, socket_timeout=0.5)
                info = s.sentinel_master(MASTER)
                replicas = s.sentinel_slaves(MASTER)
                s.close()
            except redis.RedisError:
                return False
            if info.get("num-other-sentinels", 0) < 2 or not any(
                    r.get("master-link-status") == "ok" for r in replicas):
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the sentinels report it now."""
        import redis

        for port in self.ports:
            try:
                s = redis.Redis(port=port, socket_timeout=0.5)
                host_port = s.sentinel_get_master_addr_by_name(MASTER)
                s.close()
                if host_port:
                    return int(host_port[1])
            except redis.RedisError:
                continue
        return None

    @staticmethod
    def wait(ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def kill_master(self) -> None:
        """SIGKILL the master (nothing flushed, nothing handed over)."""
        self.master.stop()

    def wait_failover(self, timeout: float = 30.0) -> None:
        self.wait(lambda: self.master_port() == self.replica.port, timeout,
                  "the sentinels to promote the replica")

    def client(self, **kwargs):
        """A client of the current master (found through the sentinels)."""
        from redis.sentinel import Sentinel

        sentinel = Sentinel([("127.0.0.1", p) for p in self.ports], socket_timeout=2)
        return sentinel.master_for(MASTER, socket_timeout=5, **kwargs)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.procs.clear()
        self.master.close()
        self.replica.close()
        shutil.rmtree(self.dir, ignore_errors=True)
