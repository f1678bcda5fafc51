"""``aiecs health``: the checks behind liveness and readiness probes.

- **broker**: a connection to ``CELERY_BROKER_URL`` opens (kombu's Redis channel PINGs
  as it opens), and a Redis broker is not a Redis Cluster node (kombu cannot use one);
- **state**: the state Redis (``REDIS_URL``) answers a PING, and is a Redis Cluster node
  exactly when AIECS_REDIS_CLUSTER says so (aiecs's keys span slots on a cluster it was
  not told of), a cluster that serves every slot (``cluster_state:ok``);
- with ``--worker``, this host's worker:
  - **node**: each Celery node named by ``--node`` (``%h`` is this host's name, as in
    ``celery worker --hostname``) answers a control ``ping`` through the broker: its
    consumer loop is alive (a stopped or wedged main process does not answer). Without
    ``--node``, every node of this host that answers a broadcast ping within a second
    counts, whatever its name (``celery@%h``, the ``aiecs1@%h`` ... ``aiecsN@%h`` of
    ``aiecs worker --processes N``, a ``--hostname`` of yours), and at least one must;
  - **loop**: every aiecs worker process of this host (the lease owners
    ``host:pid:token`` of ``aiecs:owners`` whose process exists here, see
    :mod:`aiecs_worker.store.lease`) renewed its lease within two renewal intervals
    (``AIECS_LEASE_SECONDS`` × 2/3): its event loop runs. There must be at least one: a
    worker whose processes have not started their loop yet is not ready;
- with ``--server URL``: the progress server's ``/healthz`` answers 200.

Every check is bounded by ``--timeout``; the command exits 0 when all pass, 1 otherwise,
printing one line per check. With ``--live`` (liveness probes) an unreachable broker or
state Redis is reported but not counted, nor the worker checks it prevents: the worker
rides out Redis outages by itself (docs/reliability.md), and restarting it would not
bring Redis back; only a worker seen stuck while Redis answers fails.

The probe runs beside the worker (Kubernetes ``exec`` probes, a compose ``healthcheck``):
same host name, same process namespace, same settings.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass

import click

from ..settings import get_settings
from ..store.keys import SHARD_PREFIXES, owners_key
from ..store.lease import holder_is_dead_here

__all__ = ["Check", "check_all", "health_command"]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok' if self.ok else 'FAIL':4s} {self.name}: {self.detail}"


def _guard(name: str, func) -> Check:
    try:
        return func()
    except Exception as exc:  # noqa: BLE001 - any failure is the check's answer
        return Check(name, False, f"{type(exc).__name__}: {exc}")


def check_broker(app, timeout: float) -> Check:
    def run() -> Check:
        conn = app.connection_for_write(connect_timeout=timeout)
        conn.transport_options = {**conn.transport_options, "socket_timeout": timeout,
                                  "socket_connect_timeout": timeout}
        try:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=timeout)
            channel = conn.default_channel  # opening the channel PINGs a Redis broker
            redis_client = getattr(channel, "client", None)
            if (redis_client is not None and hasattr(redis_client, "info")
                    and _cluster_enabled(redis_client)):
                return Check("broker", False, f"{conn.as_uri()} is a Redis Cluster node: "
                             "kombu cannot use a cluster; point CELERY_BROKER_URL at a plain "
                             "Redis or RabbitMQ (docs/operations.md, \"On a Redis Cluster\")")
            return Check("broker", True, conn.as_uri())
        finally:
            conn.release()

    return _guard("broker", run)


def _cluster_enabled(client) -> bool:
    """Whether a Redis server runs in cluster mode (``INFO cluster``)."""
    return bool(int(client.info("cluster").get("cluster_enabled", 0)))


def check_state(client, cluster: bool = False) -> Check:
    """The state Redis answers, and is a cluster (serving every slot) when ``cluster``
    (AIECS_REDIS_CLUSTER), a plain Redis otherwise."""
    def run() -> Check:
        if not client.ping():
            return Check("state", False, "Redis PING")
        if not cluster:
            if _cluster_enabled(client):
                return Check("state", False, "REDIS_URL is a Redis Cluster node and "
                             "AIECS_REDIS_CLUSTER is not set: aiecs's keys would span slots "
                             "(MOVED, CROSSSLOT); set AIECS_REDIS_CLUSTER=1 in every process")
            return Check("state", True, "Redis PING")
        if not _cluster_enabled(client):
            return Check("state", False, "AIECS_REDIS_CLUSTER is set but REDIS_URL is not a "
                         "Redis Cluster node; unset it (and restart every process)")
        state = client.cluster_info().get("cluster_state")
        if state != "ok":
            return Check("state", False, f"Redis Cluster state {state!r} (not every slot "
                         "served)")
        return Check("state", True, "Redis PING, Redis Cluster state ok")

    return _guard("state", run)


def node_names(patterns: list[str]) -> list[str]:
    host = socket.gethostname()
    return [p.replace("%h", host) for p in patterns]


#: Seconds a broadcast ping collects replies when no --node is named (local nodes answer
#: within milliseconds).
DISCOVERY_WINDOW = 1.0


def check_host_nodes(app, timeout: float) -> Check:
    """At least one Celery node of this host answers a broadcast ping."""
    def run() -> Check:
        host = socket.gethostname()
        window = min(timeout, DISCOVERY_WINDOW)
        replies = app.control.ping(timeout=window)
        answered = sorted(name for reply in replies or [] for name in reply
                          if name.rpartition("@")[2] == host)
        if not answered:
            return Check("node", False, f"no Celery node of {host} answered a ping within "
                                        f"{window:g}s (name one with --node to wait for it)")
        return Check("node", True, "ping answered by " + ", ".join(answered))

    return _guard("node", run)


def check_nodes(app, nodes: list[str], timeout: float) -> Check:
    if not nodes:
        return check_host_nodes(app, timeout)

    def run() -> Check:
        replies = app.control.ping(destination=nodes, timeout=timeout, limit=len(nodes))
        answered = {name for reply in replies or [] for name in reply}
        missing = [n for n in nodes if n not in answered]
        if missing:
            return Check("node", False, f"no ping reply within {timeout:g}s from "
                                        + ", ".join(missing))
        return Check("node", True, "ping answered by " + ", ".join(nodes))

    return _guard("node", run)


def check_loops(client, lease_seconds: int) -> Check:
    """Every live aiecs process of this host renewed its lease within 2/3 of it."""
    def run() -> Check:
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
        lease_ms = lease_seconds * 1000
        max_age_ms = lease_ms * 2 // 3
        host = socket.gethostname()
        live, stale = [], []
        leases: dict[str, float] = {}  # each owner's oldest renewal (every shard has one)
        for shard in SHARD_PREFIXES:
            for raw, until in client.zrange(owners_key(shard), 0, -1, withscores=True):
                owner = raw.decode()
                leases[owner] = min(until, leases.get(owner, until))
        for owner, until in leases.items():
            if owner.rsplit(":", 2)[0] != host or holder_is_dead_here(owner):
                continue
            age_ms = now_ms - (until - lease_ms)
            (stale if age_ms > max_age_ms else live).append(f"{owner} ({age_ms / 1000:.1f}s)")
        if stale:
            return Check("loop", False, "lease not renewed for over "
                         f"{max_age_ms / 1000:g}s: " + ", ".join(stale))
        if not live:
            return Check("loop", False, f"no aiecs worker process of {host} holds a lease "
                                        "(not started yet, or not on this host)")
        return Check("loop", True, "leases renewed: " + ", ".join(live))

    return _guard("loop", run)


def check_server(url: str, timeout: float) -> Check:
    def run() -> Check:
        target = url.rstrip("/") + "/healthz"
        try:
            with urllib.request.urlopen(target, timeout=timeout) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return Check("server", False, f"{target}: HTTP {exc.code}")
        return Check("server", body.get("status") == "ok", f"{target}: {body}")

    return _guard("server", run)


def check_all(*, worker: bool, nodes: list[str], server: str | None, timeout: float,
              live: bool = False, lease_seconds: int | None = None) -> list[Check]:
    """The checks asked for, each bounded by ``timeout`` seconds, with the environment's
    settings (``lease_seconds`` overrides AIECS_LEASE_SECONDS); ``live``: see above."""
    # deferred: redis and the Celery app serve this command only (every `aiecs` command
    # imports this module)
    from ..app import app
    from ..store.connection import sync_client

    s = get_settings()
    client = sync_client(s.state_redis_url, socket_timeout=timeout,
                         socket_connect_timeout=timeout)
    try:
        checks = [check_broker(app, timeout), check_state(client, s.aiecs_redis_cluster)]
        if worker:
            # the ping needs the broker, the leases the state Redis
            checks.append(check_nodes(app, node_names(nodes), timeout) if checks[0].ok
                          else Check("node", False, "not checked: broker unreachable"))
            checks.append(check_loops(client, lease_seconds or s.aiecs_lease_seconds)
                          if checks[1].ok
                          else Check("loop", False, "not checked: state Redis unreachable"))
    finally:
        client.close()
    if live and not (checks[0].ok and checks[1].ok):
        checks = [c if c.ok or c.name not in ("broker", "state", "node", "loop") else
                  Check(c.name, True, f"not counted (--live): {c.detail}") for c in checks]
    if server:
        checks.append(check_server(server, timeout))
    return checks


@click.command("health")
@click.option("--worker", "worker_", is_flag=True,
              help="Also check this host's worker: its Celery node answers a ping and its "
                   "processes' event loops renew their leases.")
@click.option("--node", "nodes", multiple=True,
              help="Celery node name(s) of the worker (as given to --hostname; %h is this "
                   "host's name), each of which must answer. Repeatable. Default: any node "
                   "of this host (celery@%h, aiecs1@%h ... of aiecs worker --processes N), "
                   "at least one.")
@click.option("--server", "server_url", default=None, metavar="URL",
              help="Also check a progress server's /healthz.")
@click.option("--timeout", type=float, default=5.0, show_default=True,
              help="Seconds each check may take.")
@click.option("--live", is_flag=True,
              help="Liveness: an unreachable broker or state Redis is not counted (only a "
                   "worker seen stuck while they answer fails).")
def health_command(worker_: bool, nodes: tuple[str, ...], server_url: str | None,
           timeout: float, live: bool) -> None:
    """Check the broker and the state Redis (and the worker, the server): exit 0 when
    healthy, 1 otherwise. For liveness and readiness probes."""
    checks = check_all(worker=worker_, nodes=list(nodes), server=server_url, timeout=timeout,
                       live=live)
    for check in checks:
        click.echo(check.line())
    sys.exit(0 if all(c.ok for c in checks) else 1)
