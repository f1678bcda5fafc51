"""Hostile input against a real server: every malformed, deep or huge input gets a clear
error (never a 500, a traceback, or a dead connection/server).

The property tests drive random JSON bodies, headers and Socket.IO payloads; the example
tests pin the reported cases (a 100,000-deep body, a 100,000-deep Socket.IO message).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.server.helpers import Recorder, async_wait_until, uid, wait_until
from tests.support.props import json_values, props

DEEP = "[" * 100_000 + "]" * 100_000


def tracebacks(log: str) -> list[str]:
    """Tracebacks in a server log, leaving out logging's own ``--- Logging error ---``
    reports (a handler or formatter failing on a record is a logging problem, not an
    exception of the request)."""
    out, skipping = [], False
    for line in log.splitlines():
        if line.startswith("--- Logging error ---"):
            skipping = True
        elif skipping and line.startswith("Arguments:"):
            skipping = False
        elif not skipping and ("Traceback" in line or "RecursionError" in line):
            out.append(line)
    return out


def is_error(status, body, *codes):
    return (status in codes and isinstance(body, dict)
            and isinstance(body.get("error"), dict)
            and isinstance(body["error"].get("type"), str) and body["error"].get("message"))


# -- HTTP -------------------------------------------------------------------------------------
def test_hundred_thousand_deep_body_is_400_with_one_log_line(progress_server):
    server = progress_server
    token = server.token(uid())
    before = server.log()
    status, body = server.http("POST", "/tasks", raw=DEEP.encode(), token=token,
                               headers={"Content-Type": "application/json"})
    assert is_error(status, body, 400), (status, body)
    assert body["error"]["message"] == "body is nested deeper than 64 levels"
    assert body["error"]["limit"] == 64
    wait_until(lambda: "refused POST /tasks: 400" in server.log()[len(before):],
               message="the log line")
    new = server.log()[len(before):]
    lines = [line for line in new.splitlines() if "aiecs.server" in line]
    assert lines == ["INFO aiecs.server: refused POST /tasks: 400 bad_request: "
                     "body is nested deeper than 64 levels"], new
    assert tracebacks(new) == [], new
    assert server.health()[0] == 200


def test_deep_within_the_limit_reaches_validation(progress_server):
    token = progress_server.token(uid())
    value: object = "x"
    for _ in range(62):  # body (1) + input_data (1) + 62 = 64 levels
        value = [value]
    body = {"mode": "zz-none", "service": "echo", "task_name": "echo",
            "input_data": {"v": value}}
    status, answer = progress_server.http("POST", "/tasks", body, token=token)
    assert is_error(status, answer, 422) and answer["error"]["type"] == "ServiceNotFoundError"
    body["input_data"] = {"v": [value]}
    status, answer = progress_server.http("POST", "/tasks", body, token=token)
    assert is_error(status, answer, 400) and "nested deeper" in answer["error"]["message"]


@pytest.mark.parametrize(("raw", "headers", "code"), [
    (b"", {}, 400),
    (b"\xff\xfe\x00garbage", {}, 400),
    (b'{"a": 1', {}, 400),
    (b"1" * 5000, {}, 400),  # an int past Python's digit limit
    (b"[]" * 10, {}, 400),
    (b"{}", {"Content-Length": "9" * 40}, 413),
    (b"{}", {"Content-Length": "-1"}, 400),
    (b"x" * (2 * 1024 * 1024), {}, 413),
    (DEEP.replace("[", "{\"a\":")[:200_000].encode(), {}, 400),
])
def test_malformed_bodies(progress_server, raw, headers, code):
    token = progress_server.token(uid())
    try:
        status, body = progress_server.http("POST", "/tasks", raw=raw, token=token,
                                            headers={"Content-Type": "application/json",
                                                     **headers})
    except OSError:
        # refused before the client finished sending (the server answers 413 from the
        # Content-Length and closes), or an impossible Content-Length at the HTTP layer
        assert headers or code == 413
        if code == 413 and not headers:
            wait_until(lambda: "refused POST /tasks: 413" in progress_server.log())
        return
    if headers and status == 400 and not isinstance(body, dict):
        return  # uvicorn's own answer to an invalid Content-Length
    assert is_error(status, body, code), (status, body)
    assert progress_server.health()[0] == 200


_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {"mode": st.text(max_size=10).map(lambda s: "zz" + s), "service": st.text(max_size=10),
         "task_name": st.text(max_size=10)},
        optional={"input_data": json_values, "context": json_values, "step": json_values,
                  "task_id": json_values, "heavy": json_values, "user_id": json_values,
                  "extra": json_values},
    ).map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(0, 3000).map(lambda n: ("[" * n + "]" * n).encode()),
    st.integers(0, 3000).map(lambda n: ('{"mode":' * n).encode()),
)
_header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@props(60)
@given(body=_bodies, content_type=st.sampled_from(
    ["application/json", "text/plain", "", "application/json; charset=latin-1"]),
    auth=st.sampled_from(["good", "none", "garbage"]) | _header_values)
def test_random_bodies_and_headers_never_500(progress_server, body, content_type, auth):
    server = progress_server
    headers = {"Content-Type": content_type} if content_type else {}
    token = None
    if auth == "good":
        token = server.token("fuzzer")
    elif auth != "none":
        headers["Authorization"] = auth if auth != "garbage" else "Bearer x.y.z"
    status, answer = server.http("POST", "/tasks", raw=body, token=token, headers=headers)
    assert is_error(status, answer, 400, 401, 413, 422), (status, answer, body[:200])


@props(40)
@given(task_id=st.text(min_size=1, max_size=40), query=st.dictionaries(
    st.sampled_from(["step", "events", "x"]), st.text(max_size=30), max_size=3),
    method=st.sampled_from(["GET", "DELETE"]))
def test_random_task_paths_and_parameters_never_500(progress_server, task_id, query, method):
    import urllib.parse

    path = "/tasks/" + urllib.parse.quote(task_id, safe="") + (
        "?" + urllib.parse.urlencode(query) if query else "")
    status, answer = progress_server.http(method, path, token=progress_server.token("fuzzer"))
    assert is_error(status, answer, 400, 404, 405), (status, answer, path)


def test_deep_header_in_a_token_is_refused(progress_server):
    import base64

    header = base64.urlsafe_b64encode(b"[" * 2500 + b"]" * 2500).rstrip(b"=").decode()
    status, body = progress_server.http("GET", "/tasks/t1", token=header + ".e30.sig")
    assert is_error(status, body, 401)


# -- Socket.IO --------------------------------------------------------------------------------
def deep_value(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def test_deep_messages_answered_and_connection_survives(progress_server):
    async def main():
        client = Recorder(progress_server, progress_server.token(uid()))
        client.sio.reconnection = False
        await client.connect()
        for event in ("subscribe", "ping", "no_such_event"):
            ack = await client.sio.call(event, {"task_id": deep_value(150)}, timeout=10)
            assert ack == {"ok": False, "error": {
                "type": "invalid_message", "message": "message is nested deeper than 64 levels"}}
        # far deeper than any recursion limit (what no client library would encode), as
        # raw Socket.IO packets within AIECS_MAX_MESSAGE_BYTES
        await client.sio.eio.send('27["subscribe",' + "[" * 30_000 + "]" * 30_000 + "]")
        await client.sio.eio.send('2["subscribe",' + '{"a":' * 10_000)
        await client.sio.eio.send("x-garbage")
        await client.sio.eio.send("51-[\"subscribe\",{\"_placeholder\":true,\"num\":0}]")
        await async_wait_until(lambda: len(client.live("request_error")) >= 7,
                               message=lambda: f"request_error x7; got {client.raw}")
        errors = [e["error"]["type"] for e in client.live("request_error")]
        assert set(errors) == {"invalid_message"}
        assert client.sio.connected
        assert (await client.subscribe(uid("t")))["ok"] is True
        await client.close()

    before = progress_server.log()
    asyncio.run(main())
    new = progress_server.log()[len(before):]
    assert tracebacks(new) == [], new
    assert progress_server.health()[0] == 200


def test_malformed_events_answered(progress_server):
    async def main():
        client = Recorder(progress_server, progress_server.token(uid()))
        await client.connect()
        for raw in ('2[]', '2{}', '2"subscribe"', '25', '2[5,{}]', '2[null]', '2[["x"]]'):
            await client.sio.eio.send(raw)
        await async_wait_until(lambda: len(client.live("request_error")) >= 7,
                               message=lambda: f"request_error x7; got {client.raw}")
        assert client.sio.connected
        assert (await client.sio.call("ping", timeout=10))["time"] > 0
        await client.close()

    before = progress_server.log()
    asyncio.run(main())
    assert tracebacks(progress_server.log()[len(before):]) == []


class _Session:
    """One connection reused across a property's examples (a loop of its own)."""

    def __init__(self, server):
        self.loop = asyncio.new_event_loop()
        self.client = Recorder(server, server.token(uid("fuzz")))
        self.run(self.client.connect())

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self):
        self.run(self.client.close())
        self.loop.close()


@pytest.fixture(scope="module")
def fuzz_session(progress_server):
    session = _Session(progress_server)
    yield session
    session.close()


@props(80)
@given(event=st.sampled_from(["subscribe", "ping", "anything"]) | st.text(max_size=70),
       args=st.lists(json_values, max_size=3))
def test_random_socket_payloads_get_an_answer(fuzz_session, event, args):
    sio = fuzz_session.client.sio

    async def main():
        if event in ("connect", "disconnect", "message", "connect_error"):
            return None  # names python-socketio itself refuses to emit
        return await sio.call(event, tuple(args) if len(args) != 1 else args[0], timeout=10)

    ack = fuzz_session.run(main())
    if ack is None:
        return
    assert sio.connected
    if event == "ping":
        assert ack["time"] > 0
    elif not (event == "subscribe" and ack.get("ok")):
        assert ack["ok"] is False and ack["error"]["type"] in (
            "invalid_request", "unknown_event", "invalid_message", "rate_limited"), ack


class RawSocket:
    """A bare Engine.IO client speaking Socket.IO by hand, to send packets no library would
    (and to take answers to ack ids that a library client never registered)."""

    def __init__(self, server):
        import engineio

        self.server = server
        self.eio = engineio.AsyncClient()
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.eio.on("message", self.inbox.put)
        self._ids = iter(range(10_000, 10**9))

    async def connect(self, token: str) -> None:
        await self.eio.connect(self.server.url, transports=["websocket"],
                               engineio_path="socket.io")
        await self.eio.send("0" + json.dumps({"token": token}))
        assert (await self.expect(lambda m: m.startswith("0"))).startswith('0{"sid"')

    async def expect(self, predicate, timeout: float = 10) -> str:
        while True:
            message = await asyncio.wait_for(self.inbox.get(), timeout)
            if isinstance(message, str) and predicate(message):
                return message

    async def ping(self) -> dict:
        n = next(self._ids)
        await self.eio.send(f'2{n}["ping"]')
        answer = await self.expect(lambda m: m.startswith(f"3{n}["))
        return json.loads(answer[len(f"3{n}"):])[0]


@pytest.fixture(scope="module")
def raw_session(progress_server):
    loop = asyncio.new_event_loop()
    raw = RawSocket(progress_server)
    loop.run_until_complete(raw.connect(progress_server.token(uid("raw"))))
    yield loop, raw
    loop.run_until_complete(raw.eio.disconnect())
    loop.close()


def test_raw_packet_with_an_ack_id_gets_the_error_as_ack(raw_session):
    loop, raw = raw_session

    async def main():
        await raw.eio.send('277["subscribe",' + "[" * 20_000 + "]" * 20_000 + "]")
        answer = await raw.expect(lambda m: m.startswith("377["))
        assert json.loads(answer[3:]) == [{"ok": False, "error": {
            "type": "invalid_message", "message": "message is nested deeper than 64 levels"}}]
        await raw.eio.send("278")  # an event with an ack id and no data at all
        answer = await raw.expect(lambda m: m.startswith("378["))
        assert json.loads(answer[3:])[0]["error"]["type"] == "invalid_message"
        await raw.eio.send('0{"token": ' + "[" * 20_000)  # a broken CONNECT: refused
        answer = await raw.expect(lambda m: m.startswith("4"))
        assert json.loads(answer[1:])["data"]["type"] == "invalid_message"
        assert (await raw.ping())["time"] > 0

    loop.run_until_complete(main())


@props(80)
@given(raw=st.text(max_size=80) | st.text(alphabet='0123456789[]{}",:-/ a', max_size=80))
def test_random_raw_packets_never_break_the_connection(raw_session, raw):
    loop, sock = raw_session
    if raw[:1] in ("0", "1"):
        raw = "2" + raw  # a (dis)connect packet would legitimately change the session

    async def main():
        await sock.eio.send(raw)
        return await sock.ping()

    assert loop.run_until_complete(main())["time"] > 0
    assert sock.eio.state == "connected"
