"""A private RabbitMQ virtual host per test, on the machine's RabbitMQ server.

The server is shared (other tests and programs use it), so each test gets a vhost of its
own, made with ``rabbitmqctl`` and deleted afterwards with everything in it. The test is
skipped when no RabbitMQ answers on ``AIECS_TEST_AMQP_HOST`` (127.0.0.1:5672, user
guest/guest) or ``rabbitmqctl`` is missing or not allowed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass

import pytest

HOST = os.environ.get("AIECS_TEST_AMQP_HOST", "127.0.0.1:5672")
USER = os.environ.get("AIECS_TEST_AMQP_USER", "guest")
PASSWORD = os.environ.get("AIECS_TEST_AMQP_PASSWORD", "guest")


@dataclass
class RabbitVhost:
    name: str

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@{HOST}/{self.name}"

    def queue_depth(self, queue: str) -> int:
        """Messages ready in ``queue`` (0 when it does not exist yet)."""
        from kombu import Connection

        with Connection(self.url) as conn:
            channel = conn.channel()
            try:
                return channel.queue_declare(queue, passive=True).message_count
            except Exception:  # noqa: BLE001 - not declared yet (404 closes the channel)
                return 0


    def close_connections(self) -> None:
        """Close every client connection of this vhost (a broker restart, as its clients
        see it), on a shared server that must not restart."""
        done = _ctl("close_all_connections", "--vhost", self.name, "aiecs fault test")
        assert done.returncode == 0, done.stderr


def _ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def _reachable() -> str | None:
    host, _, port = HOST.partition(":")
    try:
        socket.create_connection((host, int(port or 5672)), timeout=1).close()
    except OSError as exc:
        return f"no RabbitMQ on {HOST}: {exc}"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl is not installed (needed to make a private vhost)"
    return None


@pytest.fixture
def rabbit_vhost():
    """A fresh RabbitMQ vhost (``.url`` is an amqp:// broker URL), deleted after the test."""
    problem = _reachable()
    if problem:
        pytest.skip(problem)
    vhost = RabbitVhost(f"aiecs-test-{uuid.uuid4().hex[:12]}")
    made = _ctl("add_vhost", vhost.name)
    if made.returncode != 0:
        pytest.skip(f"rabbitmqctl add_vhost failed: {made.stderr.strip()[:200]}")
    try:
        perms = _ctl("set_permissions", "-p", vhost.name, USER, ".*", ".*", ".*")
        assert perms.returncode == 0, perms.stderr
        yield vhost
    finally:
        _ctl("delete_vhost", vhost.name)
