"""A real Redis Cluster on free ports: three ``redis-server --cluster-enabled yes``
masters joined by ``redis-cli --cluster create`` (no replicas), every slot covered.

``.url`` is the first node's (what REDIS_URL names with AIECS_REDIS_CLUSTER=1);
``.client()`` is a ``RedisCluster`` that follows the slots.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RedisCluster"]


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


#: node ports come from 20000-22767, so their cluster bus ports (+10000) stay under
#: 32768, where Linux's ephemeral range begins: no outgoing connection (another test's
#: client, a free_port() server) can take a bus port between the check and the bind
_LOW, _HIGH = 20000, 22767


def cluster_ports(count: int) -> list[int]:
    """``count`` free ports whose bus ports are free too, none a bus port of another."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(_LOW, _HIGH)
        taken = {p for c in chosen for p in (c, c + 10000)}
        if {port, port + 10000} & taken:
            continue
        if _free(port) and _free(port + 10000):
            chosen.append(port)
    return chosen


@dataclass
class RedisCluster:
    #: replicas per primary (``--cluster-replicas``): 0, or 1 for six nodes
    replicas: int = 0
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aiecs-cluster-")))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self, timeout: float = 30.0, attempts: int = 3) -> RedisCluster:
        """Start the nodes and join them. A node that cannot bind (a port taken between
        the check and the bind, by a test in another process) ends the attempt: every
        node stops and the next attempt draws new ports."""
        for attempt in range(attempts):
            self.ports = cluster_ports(3 * (1 + self.replicas))
            self._launch()
            if self._all_bound(timeout) or attempt == attempts - 1:
                break
            self.close(remove=False)
            for node_dir in self.dir.iterdir():
                shutil.rmtree(node_dir, ignore_errors=True)
        self._join(timeout)
        return self

    def _all_bound(self, timeout: float) -> bool:
        """True once every node answers; False as soon as one has exited."""
        import redis

        deadline = time.monotonic() + timeout
        pending = list(self.ports)
        while pending and time.monotonic() < deadline:
            for port in list(pending):
                if self.procs[self.ports.index(port)].poll() is not None:
                    return False
                try:
                    if redis.Redis(port=port, socket_timeout=0.5).ping():
                        pending.remove(port)
                except redis.RedisError:
                    pass
            time.sleep(0.05)
        return not pending

    def _launch(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server / redis-cli are not installed")
        for port in self.ports:
            node_dir = self.dir / str(port)
            node_dir.mkdir()
            self.procs.append(subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(node_dir), "--protected-mode", "no",
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000", "--logfile", str(node_dir / "log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def _join(self, timeout: float) -> None:
        import redis

        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p, socket_timeout=0.5).ping(),
                       timeout, f"node {port} to answer")
        subprocess.run([shutil.which("redis-cli"), "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in self.ports),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=timeout)

        def ready() -> bool:
            for port in self.ports:
                node = redis.Redis(port=port, socket_timeout=0.5)
                if node.cluster("info").get("cluster_state") != "ok":
                    return False
                if node.info("replication").get("master_link_status", "up") != "up":
                    return False
            return True

        self._wait(ready, timeout, "the cluster to cover every slot")

    def _logs(self) -> str:
        return "\n".join(f"{p.parent.name}: {p.read_text(errors='replace')[-2000:]}"
                         for p in self.dir.glob("*/log"))

    def _wait(self, ready, timeout: float, what: str) -> None:
        import redis

        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {self._logs()}")
            time.sleep(0.05)

    def primary_of(self, key: str) -> int:
        """The port of the primary serving ``key``'s slot now."""
        client = self.client()
        try:
            return client.get_node_from_key(key).port
        finally:
            client.close()

    def kill(self, port: int) -> None:
        """SIGKILL one node (nothing flushed, nothing handed over)."""
        proc = self.procs[self.ports.index(port)]
        proc.kill()
        proc.wait(timeout=10)

    def wait_promoted(self, key: str, dead: int, timeout: float = 30.0) -> int:
        """Wait until a replica serves ``key``'s slot in place of the dead primary."""
        import redis

        alive = next(p for p in self.ports if p != dead)

        def promoted() -> int | None:
            from redis.cluster import RedisCluster as Client

            client = Client(host="127.0.0.1", port=alive, socket_timeout=0.5)
            try:
                port = client.get_node_from_key(key).port
            finally:
                client.close()
            return port if port != dead else None

        port = None

        def ready() -> bool:
            nonlocal port
            port = promoted()
            return port is not None and redis.Redis(port=alive).cluster("info").get(
                "cluster_state") == "ok"

        self._wait(ready, timeout, "a replica promoted")
        return port

    def client(self, **kwargs):
        """A cluster client whose start-up nodes are the nodes still running (after
        :meth:`kill`, the first port may be the dead one)."""
        from redis.cluster import ClusterNode
        from redis.cluster import RedisCluster as Client

        alive = [p for p, proc in zip(self.ports, self.procs, strict=True)
                 if proc.poll() is None] or self.ports
        return Client(startup_nodes=[ClusterNode("127.0.0.1", p) for p in alive], **kwargs)

    def close(self, remove: bool = True) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        self.procs.clear()
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)
