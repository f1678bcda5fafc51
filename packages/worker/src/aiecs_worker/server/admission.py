"""Which Engine.IO sessions the progress server keeps: the socket caps.

* An Engine.IO session (a websocket or a polling session) must carry a Socket.IO
  connection authenticated by a token within ``auth_timeout`` seconds, or the server
  closes it: idle unauthenticated sessions hold no memory for long.
* One client address holds at most ``per_address`` Engine.IO sessions, authenticated or
  not; one more is refused at the handshake (HTTP 401 with a JSON reason on polling,
  which python-socketio's client hands to ``connect_error``; a websocket handshake is
  closed).
* One user holds at most ``per_user`` authenticated Socket.IO connections; one more is
  refused with ``connect_error`` ``{"type": "too_many_connections"}`` (checked by
  :class:`~.realtime.ProgressSocket`).

Counts are per server process (kept in memory, freed when a session ends, nothing to
leak when a process dies): with N server processes behind a load balancer, a user or an
address may hold up to N times the caps. The address is the peer address the ASGI server
reports (``REMOTE_ADDR``): ``aiecs serve`` ignores forwarded headers, so behind a reverse
proxy it is the proxy's; under uvicorn told to trust the proxy (``--proxy-headers
--forwarded-allow-ips=PROXY_IP``) it is the client's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

__all__ = ["SocketAdmission", "SocketLimits", "TOO_MANY_CONNECTIONS"]

log = logging.getLogger("aiecs.server")

#: ``type`` of the error refusing a connection over a cap.
TOO_MANY_CONNECTIONS = "too_many_connections"


@dataclass(frozen=True)
class SocketLimits:
    """See the server settings AIECS_SOCKET_AUTH_TIMEOUT, AIECS_MAX_SOCKETS_PER_USER and
    AIECS_MAX_SOCKETS_PER_ADDRESS."""

    auth_timeout: float = 5.0
    per_user: int = 50
    per_address: int = 200


class SocketAdmission:
    """Per-address counts of Engine.IO sessions and their authentication deadlines."""

    def __init__(self, limits: SocketLimits):
        self.limits = limits
        self._by_address: dict[str, int] = {}
        self._address_of: dict[str, str] = {}
        self._deadlines: dict[str, asyncio.Task] = {}

    def sessions(self, address: str) -> int:
        return self._by_address.get(address, 0)

    def open(self, eio_sid: str, environ: dict[str, Any], check) -> dict[str, Any] | None:
        """Count a new Engine.IO session; the refusal to answer when its address is at the
        cap (None: admitted). ``check()`` is awaited after ``auth_timeout`` and closes the
        session when it has not authenticated."""
        address = str(environ.get("REMOTE_ADDR") or "unknown")
        held = self._by_address.get(address, 0)
        if held >= self.limits.per_address:
            message = (f"too many connections from this address (limit "
                       f"{self.limits.per_address} per server process)")
            log.warning("refused a connection from %s: %d sessions open (limit %d)",
                        address, held, self.limits.per_address)
            return {"message": message,
                    "data": {"type": TOO_MANY_CONNECTIONS, "message": message}}
        self._by_address[address] = held + 1
        self._address_of[eio_sid] = address
        self._deadlines[eio_sid] = asyncio.get_running_loop().create_task(
            self._deadline(check))
        return None

    async def _deadline(self, check) -> None:
        await asyncio.sleep(self.limits.auth_timeout)
        await check()

    def authenticated(self, eio_sid: str) -> None:
        """The session's Socket.IO connection was accepted: no deadline any more."""
        task = self._deadlines.pop(eio_sid, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def rearm(self, eio_sid: str, check) -> None:
        """The session's Socket.IO connection ended but the session did not: it has
        ``auth_timeout`` again to authenticate."""
        if eio_sid in self._address_of and eio_sid not in self._deadlines:
            self._deadlines[eio_sid] = asyncio.get_running_loop().create_task(
                self._deadline(check))

    def close(self, eio_sid: str) -> None:
        """The session ended: free its address's slot."""
        task = self._deadlines.pop(eio_sid, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        address = self._address_of.pop(eio_sid, None)
        if address is not None:
            left = self._by_address.get(address, 1) - 1
            if left > 0:
                self._by_address[address] = left
            else:
                self._by_address.pop(address, None)

    def stop(self) -> None:
        for task in self._deadlines.values():
            task.cancel()
        self._deadlines.clear()
