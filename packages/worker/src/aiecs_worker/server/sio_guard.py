"""Socket.IO hardening against hostile clients: :class:`SafeJson` (client JSON is
depth-checked before it is parsed) and :class:`GuardedServer` (packets that do not decode
are answered with an error instead of raising, binary packets are refused, Engine.IO
sessions are admitted by :class:`~.admission.SocketAdmission`)."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import socketio
from aiecs_core import jsonlimits
from socketio import packet as sio_packet

from .admission import SocketAdmission

__all__ = ["GuardedServer", "SafeJson"]

log = logging.getLogger("aiecs.server")

#: ``<type>[<attachments>-][/<namespace>,][<ack id>]``: enough of a packet that did not
#: decode to answer it (python-socketio's own decoder reads the same prefix).
_PACKET_PREFIX = re.compile(r"(\d)(?:\d{1,10}-)?(/[^,]{0,200},)?(\d{1,100})?")


class SafeJson:
    """The JSON module python-socketio and Engine.IO decode client packets with: the
    standard one, except that text nested deeper than ``MAX_JSON_DEPTH`` is refused with
    a ``ValueError`` before ``json.loads`` can recurse (Engine.IO then keeps the text as
    is, and :class:`GuardedServer` answers the Socket.IO packet with an error)."""

    @staticmethod
    def loads(text: Any, *args: Any, **kwargs: Any) -> Any:
        return jsonlimits.loads(text, max_depth=jsonlimits.MAX_JSON_DEPTH, what="message")

    @staticmethod
    def dumps(value: Any, *args: Any, **kwargs: Any) -> str:
        return json.dumps(value, *args, **kwargs)


class GuardedServer(socketio.AsyncServer):
    """An ``AsyncServer`` that answers packets it cannot use instead of raising.

    python-socketio raises from its packet handler on a packet that does not decode
    (bad type digit, invalid or too deeply nested JSON) or an event that is not a list
    headed by a name; the exception ends up as a logged traceback per message and the
    client's acknowledgement never comes. Here each such packet is handed to
    ``on_bad_packet(eio_sid, namespace, ack_id, reason)`` and the connection goes on.
    Binary packets are refused too: no handler takes binary data, and a packet may
    announce up to 10^10 attachments that python-socketio would buffer.
    """

    on_bad_packet = None  # set by ProgressSocket
    admission: SocketAdmission | None = None  # set by ProgressSocket

    async def _handle_eio_connect(self, eio_sid, environ):
        if self.admission is not None:
            refusal = self.admission.open(
                eio_sid, environ, lambda: self._close_unauthenticated(eio_sid))
            if refusal is not None:
                return refusal  # Engine.IO refuses the handshake with this reason
        return await super()._handle_eio_connect(eio_sid, environ)

    async def _handle_eio_disconnect(self, eio_sid, reason):
        if self.admission is not None:
            self.admission.close(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def _close_unauthenticated(self, eio_sid: str) -> None:
        """The session's deadline passed: close it unless it carries a connection."""
        if self.manager.sid_from_eio_sid(eio_sid, "/") is not None:
            return
        sock = self.eio.sockets.get(eio_sid)
        if sock is None:
            return
        log.info("closing an Engine.IO session that did not authenticate in time")
        await self.eio.disconnect(eio_sid)
        # Engine.IO only sends its CLOSE packet and leaves the websocket to the client
        # (closed by the server after pingInterval + pingTimeout otherwise); ending the
        # writer closes it now, whatever the client does.
        queue = getattr(sock, "queue", None)
        if getattr(sock, "upgraded", False) and queue is not None:
            queue.put_nowait(None)

    async def _handle_eio_message(self, eio_sid, data):
        if eio_sid not in self._binary_packet:
            reason = None
            if not isinstance(data, str):
                reason = "binary messages are not accepted"
            elif data[:1] in ("5", "6"):
                reason = "binary events are not accepted"
            if reason is not None:
                await self._bad_packet(eio_sid, data, reason)
                return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            if isinstance(exc, jsonlimits.JsonDepthError):
                reason = str(exc)
            elif isinstance(exc, ValueError) and "JSON" in type(exc).__name__:
                reason = f"message is not valid JSON: {exc}"
            else:
                reason = f"malformed message: {exc or type(exc).__name__}"
            await self._bad_packet(eio_sid, data, reason)

    async def _handle_event(self, eio_sid, namespace, id, data):
        if not (isinstance(data, list) and data and isinstance(data[0], str)):
            await self._answer(eio_sid, namespace, id,
                               "an event is a list starting with the event's name")
            return
        await super()._handle_event(eio_sid, namespace, id, data)

    async def _bad_packet(self, eio_sid: str, data: Any, reason: str) -> None:
        namespace, ack_id, kind = None, None, None
        if isinstance(data, str):
            m = _PACKET_PREFIX.match(data)
            if m:
                kind = int(m.group(1))
                namespace = m.group(2)[:-1] if m.group(2) else None
                ack_id = int(m.group(3)) if m.group(3) and kind == sio_packet.EVENT else None
        if kind == sio_packet.CONNECT:
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.CONNECT_ERROR, namespace=namespace,
                data={"message": reason, "data": {"type": "invalid_message",
                                                  "message": reason}}))
            return
        await self._answer(eio_sid, namespace, ack_id, reason)

    async def _answer(self, eio_sid: str, namespace: str | None, ack_id: int | None,
                      reason: str) -> None:
        error = await self.on_bad_packet(eio_sid, namespace or "/", reason)
        if ack_id is not None:
            await self._send_packet(eio_sid, self.packet_class(
                sio_packet.ACK, namespace=namespace or "/", id=ack_id,
                data=[{"ok": False, "error": error}]))
