"""A local HTTP server speaking the OpenAI wire protocol (also xAI's, which is the same).

It serves ``POST /v1/chat/completions`` (JSON and SSE streaming) and
``POST /v1/embeddings`` on 127.0.0.1, checks the requests the way the real API does
(bearer key, JSON body shape), records every request with its arrival time, and answers
either by default rules or with scripted replies, consumed in order::

    with FakeOpenAI() as server:
        server.script(Error(429, headers={"retry-after": "1"}), Text("hello"))
        ...  # point the SDK at server.base_url with api key server.api_key

Default replies: chat answers ``"echo: <last user message>"`` (word-split into stream
chunks), or ``"tool results: ..."`` after tool results, or calls the function a named
``tool_choice`` names; embeddings are deterministic vectors. Usage counts words (one word,
one token).

Servers differ, and the fake can be each kind (see :class:`FakeOpenAI`): which output-limit
field it understands (``limit_fields``; a text reply stops at that limit with
``finish_reason: length``, :class:`Generate` produces until it or the context is full),
whether it refuses the other one, and whether it refuses ``stream_options``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = [
    "Cut",
    "Error",
    "BaseHandler",
    "FakeHTTPServer",
    "FakeOpenAI",
    "Generate",
    "Hang",
    "Recorded",
    "Text",
    "ToolCalls",
    "Vectors",
]


# --- scripted replies ------------------------------------------------------------------------


@dataclass
class Text:
    """A chat reply with this text (streamed word by word when the request streams)."""

    text: str
    finish_reason: str = "stop"
    model: str | None = None
    usage: bool = True
    """Include the usage block (for streams: only if the request asked for it)."""
    delay: float = 0.0
    """Seconds between stream chunks."""
    usage_details: dict | None = None
    """Added to the usage block (``prompt_tokens_details``, ``completion_tokens_details``)."""


@dataclass
class Generate:
    """Generate ``tokens`` words (``w1 w2 ...``), or fewer: until the output limit the
    server understood (``finish_reason: length``)."""

    tokens: int = 2000
    delay: float = 0.0


@dataclass
class ToolCalls:
    """A chat reply that calls functions: ``[(name, arguments_json), ...]``."""

    calls: list[tuple[str, str]]
    text: str = ""


@dataclass
class Vectors:
    """An embeddings reply with these vectors."""

    vectors: list[list[float]]


@dataclass
class Error:
    """An HTTP error with an OpenAI-style error body."""

    status: int
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)
    type: str = "invalid_request_error"
    code: str | int | None = None
    param: str | None = None
    body: Any = None
    """Send this JSON body instead of the OpenAI-style one built from the fields above."""


@dataclass
class Hang:
    """Accept the request and never answer (until the server closes)."""

    after_chunks: int | None = None
    """For streams: send this many content chunks first, then hang."""


@dataclass
class Cut:
    """Stream this many content chunks of ``text``, then drop the connection."""

    after_chunks: int = 2
    text: str = "one two three four five six seven eight"


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float
    """time.monotonic() when the request arrived."""
    client_port: int = 0
    """The client's TCP port: equal ports mean a reused connection."""


# --- helpers -----------------------------------------------------------------------------------


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def vector_for(text: str, dims: int = 8) -> list[float]:
    """The fake's deterministic embedding of ``text``."""
    digest = hashlib.sha256(text.encode()).digest()
    return [round(digest[i % len(digest)] / 255.0, 6) for i in range(dims)]


def _chunks(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []


_ROLES = {"system", "user", "assistant", "tool", "developer"}


def _check_chat(body: Any) -> str | None:
    """Why this chat request would be rejected by the real API (None: it is fine)."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' is required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return f"messages[{i}].role is invalid"
        if message["role"] == "tool":
            if not message.get("tool_call_id"):
                return f"messages[{i}].tool_call_id is required"
            # As the real API: a tool message answers a call of the assistant turn before.
            if message["tool_call_id"] not in open_calls:
                return (
                    f"messages[{i}]: messages with role 'tool' must be a response to a "
                    "preceding message with 'tool_calls'"
                )
            open_calls.discard(message["tool_call_id"])
            continue
        if open_calls:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id'. Missing: {sorted(open_calls)}"
            )
        for call in message.get("tool_calls") or []:
            if (
                message["role"] != "assistant"
                or call.get("type") != "function"
                or not call.get("id")
                or not isinstance((call.get("function") or {}).get("arguments"), str)
            ):
                return f"messages[{i}].tool_calls[] must be {{id, type: function, function}}"
            open_calls.add(call["id"])
    if "stream_options" in body and not body.get("stream"):
        return "'stream_options' is only allowed when 'stream' is true"
    names = {(t.get("function") or {}).get("name") for t in body.get("tools") or []}
    choice = body.get("tool_choice")
    if choice is not None:
        if isinstance(choice, dict):
            if choice.get("type") != "function" or (choice.get("function") or {}).get(
                "name"
            ) not in names:
                return "tool_choice must name one of the tools: {type: function, function: {name}}"
        elif choice not in ("auto", "none", "required"):
            return "tool_choice must be auto, none, required or a named function"
    fmt = body.get("response_format")
    if fmt is not None and (
        fmt.get("type") != "json_schema" or "schema" not in fmt.get("json_schema", {})
    ):
        return "response_format must be {type: json_schema, json_schema: {name, schema}}"
    for tool in body.get("tools") or []:
        if tool.get("type") != "function" or "name" not in tool.get("function", {}):
            return "tools[] must be {type: function, function: {name, ...}}"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class FakeHTTPServer:
    """A threaded HTTP server on 127.0.0.1 with scripted replies and a request log.

    Subclasses set ``handler`` to a :class:`BaseHandler` subclass. Use as a context
    manager, or call start() and close().
    """

    handler: type[BaseHandler]
    prefix = ""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        #: Clients that closed their connection while a Hang reply was waiting.
        self.hangups = 0
        self._script: list[Any] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self):
        fake = self

        class Handler(self.handler):
            server_fake = fake

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, kwargs={"poll_interval": 0.05}
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with self._lock:
                for conn in list(self._connections):
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    # -- scripting and inspection ----------------------------------------------------------------
    def script(self, *replies: Any) -> None:
        """Queue replies; each request consumes the next one (default rules after)."""
        with self._lock:
            self._script.extend(replies)

    def _next(self) -> Any:
        with self._lock:
            return self._script.pop(0) if self._script else None

    def requests_to(self, suffix: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith(suffix)]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.requests) >= count:
                    return list(self.requests)
            time.sleep(0.01)
        raise AssertionError(f"expected {count} requests, got {len(self.requests)}")


class BaseHandler(BaseHTTPRequestHandler):
    """Plumbing shared by the fakes: JSON, chunked SSE, hanging, dropping, recording."""

    protocol_version = "HTTP/1.1"
    server_fake: FakeHTTPServer
    sse_separator = "\n\n"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.server_fake._lock:
            self.server_fake._connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server_fake._lock:
                self.server_fake._connections.discard(self.connection)

    # -- plumbing -------------------------------------------------------------------------------
    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-request-id", f"req_{len(self.server_fake.requests)}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _start_sse(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        self.end_headers()

    def _sse(self, payload: Any) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        data = ("data: " + text + self.sse_separator).encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _hang(self) -> None:
        """Say nothing more until the server closes or the client hangs up."""
        fake = self.server_fake
        while not fake._closing.is_set():
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable:
                try:
                    data = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    data = b""
                if not data:
                    with fake._lock:
                        fake.hangups += 1
                    break
        self.close_connection = True

    def _drop(self) -> None:
        """Close the TCP connection abruptly, mid-response."""
        self.wfile.flush()
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    # -- requests -------------------------------------------------------------------------------
    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        fake = self.server_fake
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        self.raw_body = raw
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = Recorded(
            "POST",
            self.path,
            {k.lower(): v for k, v in self.headers.items()},
            body,
            time.monotonic(),
            self.client_address[1],
        )
        with fake._lock:
            fake.requests.append(record)
        self.route(body)

    def route(self, body: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class _OpenAIHandler(BaseHandler):
    server_fake: FakeOpenAI

    def _error(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        code: str | int | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
        self._send_json(status, body, headers)

    def route(self, body: Any) -> None:
        fake = self.server_fake
        if self.headers.get("authorization") != f"Bearer {fake.api_key}":
            given = (self.headers.get("authorization") or "").removeprefix("Bearer ")
            return self._error(
                401,
                f"Incorrect API key provided: {given}.",
                "invalid_request_error",
                "invalid_api_key",
            )
        if self.path == f"{fake.prefix}/chat/completions":
            return self._chat(body)
        if self.path == f"{fake.prefix}/embeddings":
            return self._embeddings(body)
        return self._error(404, f"Unknown path {self.path}", "invalid_request_error")

    def _scripted_error(self, reply: Any) -> bool:
        if isinstance(reply, Error):
            if reply.body is not None:
                self._send_json(reply.status, reply.body, reply.headers)
                return True
            self._error(
                reply.status, reply.message, reply.type, reply.code, reply.headers, reply.param
            )
            return True
        if isinstance(reply, Hang) and reply.after_chunks is None:
            self._hang()
            return True
        return False

    def _limit(self, body: dict) -> tuple[int | None, str | None]:
        """(the output limit this server understood, why it refuses the request)."""
        fake = self.server_fake
        limit = None
        for name in ("max_tokens", "max_completion_tokens"):
            if name not in body:
                continue
            if name in fake.limit_fields:
                limit = int(body[name])
            elif fake.refuse_other_limit:
                other = next(iter(fake.limit_fields), "another field")
                return None, (
                    f"Unsupported parameter: '{name}' is not supported with this model. "
                    f"Use '{other}' instead."
                )
        return limit, None

    def _chat(self, body: Any) -> None:
        problem = _check_chat(body)
        if problem is not None:
            return self._error(400, problem)
        fake = self.server_fake
        limit, refused = self._limit(body)
        if refused is not None:
            param = next(f for f in ("max_tokens", "max_completion_tokens")
                         if f in body and f not in fake.limit_fields)
            return self._error(400, refused, code="unsupported_parameter", param=param)
        if "stream_options" in body and not fake.accepts_stream_options:
            return self._error(400, "Unrecognized request argument supplied: stream_options")
        fake.limits_understood.append(limit)
        reply = fake._next()
        if self._scripted_error(reply):
            return None
        model = body["model"]
        prompt_tokens = sum(
            _words(m.get("content")) for m in body["messages"] if isinstance(m.get("content"), str)
        )
        if reply is None:
            reply = self._default_reply(body)
        if isinstance(reply, Generate | Text):
            reply = self._limited(reply, limit)
        if body.get("stream"):
            return self._chat_stream(body, reply, model, prompt_tokens)
        if isinstance(reply, ToolCalls):
            message = {
                "role": "assistant",
                "content": reply.text or None,
                "tool_calls": [
                    {
                        "id": f"call_{i}",
                        "type": "function",
                        "function": {"name": name, "arguments": args},
                    }
                    for i, (name, args) in enumerate(reply.calls)
                ],
            }
            finish, text, usage_on = "tool_calls", reply.text, True
        else:
            assert isinstance(reply, Text), reply
            message = {"role": "assistant", "content": reply.text, "refusal": None}
            finish, text, usage_on = reply.finish_reason, reply.text, reply.usage
            model = reply.model or model
        payload: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
        }
        if usage_on:
            completion = _words(text) + sum(_words(a) for _, a in getattr(reply, "calls", []))
            payload["usage"] = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
                **(getattr(reply, "usage_details", None) or {}),
            }
        self._send_json(200, payload)

    def _default_reply(self, body: dict) -> Any:
        choice = body.get("tool_choice")
        if isinstance(choice, dict):  # a named function: call it (as servers honouring it do)
            return ToolCalls([(choice["function"]["name"], "{}")])
        last = body["messages"][-1]
        if last.get("role") == "tool":
            results = [m["content"] for m in body["messages"] if m.get("role") == "tool"
                       and m["tool_call_id"] in self._answered(body)]
            return Text("tool results: " + " ".join(results))
        last_user = next(
            (m.get("content") for m in reversed(body["messages"]) if m.get("role") == "user"),
            "",
        )
        return Text(f"echo: {last_user}")

    @staticmethod
    def _answered(body: dict) -> set[str]:
        """Ids of the calls of the last assistant turn with tool calls."""
        turn = next(m for m in reversed(body["messages"]) if m.get("tool_calls"))
        return {call["id"] for call in turn["tool_calls"]}

    def _limited(self, reply: Generate | Text, limit: int | None) -> Text:
        """The reply as text, stopped at the output limit understood (else the context)."""
        if isinstance(reply, Generate):
            words = [f"w{i + 1}" for i in range(reply.tokens)]
            finish, delay = "stop", reply.delay
        else:
            words, finish, delay = reply.text.split(" ") if reply.text else [], None, reply.delay
        cap = self.server_fake.context_tokens if limit is None else limit
        if len(words) > cap:
            words, finish = words[:cap], "length"
        if isinstance(reply, Text):
            return Text(" ".join(words), finish or reply.finish_reason, reply.model, reply.usage,
                        delay, reply.usage_details)
        return Text(" ".join(words), "length" if finish == "length" else "stop", delay=delay)

    def _chat_stream(self, body: dict, reply: Any, model: str, prompt_tokens: int) -> None:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
            }

        self._start_sse()
        self._sse(chunk({"role": "assistant", "content": ""}))
        if isinstance(reply, ToolCalls):
            for i, (name, args) in enumerate(reply.calls):
                half = len(args) // 2
                self._sse(
                    chunk(
                        {
                            "tool_calls": [
                                {
                                    "index": i,
                                    "id": f"call_{i}",
                                    "type": "function",
                                    "function": {"name": name, "arguments": ""},
                                }
                            ]
                        }
                    )
                )
                for piece in (args[:half], args[half:]):
                    self._sse(
                        chunk({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
                    )
            finish, completion = "tool_calls", sum(_words(a) for _, a in reply.calls)
        elif isinstance(reply, Cut):
            for piece in _chunks(reply.text)[: reply.after_chunks]:
                self._sse(chunk({"content": piece}))
            return self._drop()
        elif isinstance(reply, Hang):
            for piece in _chunks("this stream will hang")[: reply.after_chunks]:
                self._sse(chunk({"content": piece}))
            return self._hang()
        else:
            assert isinstance(reply, Text), reply
            if reply.model:
                base["model"] = reply.model
            for piece in _chunks(reply.text):
                if reply.delay:
                    time.sleep(reply.delay)
                self._sse(chunk({"content": piece}))
            finish, completion = reply.finish_reason, _words(reply.text)
            include_usage = include_usage and reply.usage
        self._sse(chunk({}, finish))
        if include_usage:
            self._sse(
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion,
                        "total_tokens": prompt_tokens + completion,
                        **(getattr(reply, "usage_details", None) or {}),
                    },
                }
            )
        self._sse("[DONE]")
        self._end_chunked()

    def _embeddings(self, body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return self._error(400, "'model' is required")
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(t, str) for t in inputs)
        ):
            return self._error(400, "'input' must be a string or an array of strings")
        if len(inputs) > 2048:
            return self._error(400, "'input' must have at most 2048 items")
        if body.get("encoding_format", "float") != "float":
            return self._error(400, "this fake only speaks encoding_format=float")
        reply = self.server_fake._next()
        if self._scripted_error(reply):
            return None
        dims = int(body.get("dimensions") or 8)
        vectors = (
            reply.vectors if isinstance(reply, Vectors) else [vector_for(t, dims) for t in inputs]
        )
        tokens = sum(_words(t) for t in inputs)
        self._send_json(
            200,
            {
                "object": "list",
                "model": body["model"],
                "data": [
                    {"object": "embedding", "index": i, "embedding": v}
                    for i, v in enumerate(vectors)
                ],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


class FakeOpenAI(FakeHTTPServer):
    """The OpenAI (and xAI) wire protocol under ``/v1``, with bearer-key auth.

    ``limit_fields``: the output-limit fields this server understands (both, by default);
    another one is ignored, as many servers do, or refused with a 400 naming it
    (``error.param``, as OpenAI does) with ``refuse_other_limit``. Without a limit it
    understood, a reply runs to ``context_tokens``. ``accepts_stream_options=False``:
    a request carrying ``stream_options`` is refused with a 400 (as some gateways do).
    """

    handler = _OpenAIHandler

    def __init__(
        self,
        api_key: str = "sk-test-0123456789abcdef",
        *,
        prefix: str = "/v1",
        limit_fields: tuple[str, ...] = ("max_tokens", "max_completion_tokens"),
        refuse_other_limit: bool = False,
        accepts_stream_options: bool = True,
        context_tokens: int = 4096,
    ):
        super().__init__()
        self.api_key = api_key
        self.prefix = prefix
        self.limit_fields = tuple(limit_fields)
        self.refuse_other_limit = refuse_other_limit
        self.accepts_stream_options = accepts_stream_options
        self.context_tokens = context_tokens
        #: The output limit understood of each chat request served (None: none).
        self.limits_understood: list[int | None] = []
