"""Secrets never leave the worker: canary tests through a real worker at DEBUG level.

The provider fakes echo the credential the worker sends (a canary) in ``x-request-id``
and other response headers and in every error message and body, on error responses
(401, 429 with Retry-After, 500, 400) and successful ones, streamed (SSE) and not, and
some replies carry it in the generated text. After a run of such calls the canary must
be nowhere: not in any Redis key or value (event logs, task state, Celery's result
backend, ...), not in anything published on Redis pub/sub (the Socket.IO packets), not in
the results Celery hands back, not in the worker's DEBUG log, while that log does show
the requests and their headers (so the test would fail if logging were off).
"""

from __future__ import annotations

import threading
import uuid

import pytest
from aiecs_worker import execute_task

from tests.support.events import dump_redis, wait_terminal
from tests.support.fake_echo import EchoingOpenAI, EchoingVertex, StreamError
from tests.support.fake_openai import Cut, Error, Text
from tests.support.fake_vertex import GoogleError

USER = [{"role": "user", "content": "hello there"}]
#: Fast retries: a retryable error is tried twice, then the task fails with it.
RETRY_ENV = {"AIECS_MAX_ATTEMPTS": "2", "AIECS_RETRY_BACKOFF": "0.01",
             "AIECS_RETRY_BACKOFF_MAX": "0.05"}


class PubSubCapture:
    """Everything published on any Redis channel while it runs (Socket.IO packets on
    ``socketio``, Celery's result notifications, cancel requests)."""

    def __init__(self, client):
        self.messages: list[tuple[bytes, bytes]] = []
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("*")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.05)
            if message is not None and message["type"] == "pmessage":
                self.messages.append((message["channel"], message["data"]))

    def close(self) -> str:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()
        return "\n".join(f"{c!r} {d!r}" for c, d in self.messages)


def submit(service: str, task_name: str, input_data: dict):
    task_id = f"t{uuid.uuid4().hex[:10]}"
    result = execute_task.delay(
        task_name=task_name, user_id="alice", task_id=task_id, step=1, mode="llm",
        service=service, input_data=input_data, context={},
    )
    return task_id, result


def run(client, service: str, task_name: str, input_data: dict, expect: str,
        error: str | None = None) -> tuple[dict, list[dict], str]:
    """Run one task to its end; return its terminal event, events and Celery result."""
    task_id, result = submit(service, task_name, input_data)
    terminal, events = wait_terminal(client, "alice", task_id)
    assert terminal["status"] == expect, (input_data, terminal)
    if error is not None:
        assert terminal["error"]["type"] == error, terminal
    outcome = result.get(timeout=15, propagate=False)
    return terminal, events, repr((outcome, result.result, result.traceback))


def find(haystack: str, needle: str) -> str:
    """The surroundings of ``needle`` in ``haystack`` ('' when absent), for messages."""
    i = haystack.find(needle)
    return "" if i < 0 else haystack[max(0, i - 600):i + 200]


def assert_nowhere(canaries: list[str], *, client, pubsub: str, results: str, log: str):
    redis_dump = dump_redis(client)
    for canary in canaries:
        assert not find(redis_dump, canary), find(redis_dump, canary)
        assert not find(pubsub, canary), find(pubsub, canary)
        assert not find(results, canary), find(results, canary)
        assert not find(log, canary), find(log, canary)


def chat(stream: bool = False, **extra) -> dict:
    return {"model": "gpt-x", "messages": USER, "stream": stream, **extra}


# --- the OpenAI wire (openai-compat: the openai and xai services) ---------------------------


@pytest.mark.parametrize(("shape", "pool", "http"),
                         [("sk-canary-{}", "threads", "aiohttp"),
                          ("plain{}", "threads", "httpx"), ("plain{}", "prefork", "aiohttp")],
                         ids=["key-shaped", "shapeless-httpx", "shapeless-prefork"])
def test_openai_wire_keys_never_leave_the_worker(aiecs_redis, start_worker, shape, pool, http):
    """``shapeless``: a key no pattern matches (an OpenAI-compatible gateway's), so only
    the registry of configured secrets can catch it. ``prefork``: the calls and their
    logging happen in pool children. ``http``: the SDK's HTTP backend (AIECS_OPENAI_HTTP);
    httpx's transport (httpcore) logs every response header at DEBUG, aiohttp's does not,
    and the SDK logs the echoed ``x-request-id`` as ``request_id`` under both."""
    canary = shape.format(uuid.uuid4().hex)
    xai_canary = shape.format(uuid.uuid4().hex)
    secret_key = f"aiecs-secret-canary-{uuid.uuid4().hex}"
    client = aiecs_redis.client()
    with EchoingOpenAI(api_key=canary) as fake, EchoingOpenAI(api_key=xai_canary) as xai:
        worker = start_worker(loglevel="DEBUG", pool=pool, concurrency=2, env={
            "OPENAI_API_KEY": canary, "OPENAI_BASE_URL": fake.base_url,
            "XAI_API_KEY": xai_canary, "XAI_BASE_URL": xai.base_url,
            "AIECS_SECRET_KEY": secret_key, "AIECS_OPENAI_HTTP": http, **RETRY_ENV,
        })
        pubsub = PubSubCapture(client)
        results: list[str] = []

        def check(input_data, expect, error=None, service="openai", task_name="chat"):
            terminal, events, result = run(client, service, task_name, input_data, expect,
                                           error)
            results.append(result)
            return terminal, events

        # errors, not streamed: 401, 429 with Retry-After (twice: retried, then failed),
        # 500 (twice), 400
        fake.script(Error(401, "Incorrect API key"))
        terminal, _ = check(chat(), "failed", "AuthenticationError")
        assert terminal["error"]["details"]["request_id"] == "[redacted]"
        fake.script(*[Error(429, "slow down", headers={"retry-after": "0.1"})] * 2)
        terminal, _ = check(chat(), "failed", "RateLimitError")
        assert terminal["error"]["details"]["retry_after"] == 0.1
        fake.script(*[Error(500, "boom", type="server_error")] * 2)
        check(chat(), "failed", "ProviderServerError")
        fake.script(Error(400, "bad request"))
        check(chat(), "failed", "InvalidRequestError")
        # the same, streamed (the error comes before the stream starts)
        fake.script(Error(401, "Incorrect API key"))
        check(chat(stream=True), "failed", "AuthenticationError")
        fake.script(*[Error(429, "slow down", headers={"retry-after-ms": "100"})] * 2)
        check(chat(stream=True), "failed", "RateLimitError")
        fake.script(*[Error(503, "overloaded", type="server_error")] * 2)
        check(chat(stream=True), "failed", "ProviderServerError")
        fake.script(Error(400, "bad request"))
        check(chat(stream=True), "failed", "InvalidRequestError")
        # an error event inside a 200 stream: before output (retried) and after it
        fake.script(StreamError([]), StreamError([]))
        check(chat(stream=True), "failed", "ProviderServerError")
        fake.script(StreamError(["partial", f" {canary}", " answer"]))
        terminal, events = check(chat(stream=True), "failed", "StreamInterruptedError")
        assert terminal["partial_output"] == "partial [redacted] answer"
        # (deltas that waited together may leave as one event: compare the text)
        assert "".join(e["delta"] for e in events if e["type"] == "stream") == (
            "partial [redacted] answer")
        # a stream cut after the canary was streamed
        fake.script(Cut(after_chunks=3, text=f"cut {canary} here and more"))
        terminal, _ = check(chat(stream=True), "failed", "StreamInterruptedError")
        assert terminal["error"]["details"]["partial_output"] == "cut [redacted] here"
        # successes (headers echo the key), with the key in the generated text
        fake.script(Text(f"the key is {canary} indeed"))
        terminal, _ = check(chat(), "completed")
        assert terminal["result"]["text"] == "the key is [redacted] indeed"
        fake.script(Text(f"streamed {canary} too"))
        terminal, _ = check(chat(stream=True), "completed")
        assert terminal["result"]["text"] == "streamed [redacted] too"
        # embeddings: an error and a success
        fake.script(Error(401, "Incorrect API key"))
        check({"model": "e", "texts": ["a"]}, "failed", "AuthenticationError", task_name="embed")
        check({"model": "e", "texts": ["a", "b"]}, "completed", task_name="embed")
        # xAI: the other key, same wire
        xai.script(Error(401, "Incorrect API key"))
        check(chat(), "failed", "AuthenticationError", service="xai")
        check(chat(stream=True), "completed", service="xai")
        # a wrong key: the server's 401 quotes it
        xai.api_key = "the-server-wants-another-key"
        check(chat(), "failed", "AuthenticationError", service="xai")

        captured = pubsub.close()
        log = worker.log()
        assert fake.requests[0].headers["authorization"] == f"Bearer {canary}"  # it was sent
        assert len(fake.requests) == 20 and len(xai.requests) == 3
    socketio_packets = [d for c, d in pubsub.messages if c == b"socketio"]
    assert len(socketio_packets) > 40, "the Socket.IO packets were captured"
    # DEBUG logging was on and printed the requests and the echoed headers
    assert "HTTP Request: POST" in log and "request_id: [redacted]" in log, log[-3000:]
    if http == "httpx":
        assert "x-request-id" in log, log[-3000:]
    assert "[redacted]" in log
    assert_nowhere([canary, xai_canary, secret_key], client=client, pubsub=captured,
                   results="\n".join(results), log=log)


# --- Vertex -------------------------------------------------------------------------------------


def test_vertex_access_token_never_leaves_the_worker(aiecs_redis, start_worker, tmp_path):
    """The credential is the OAuth access token google-auth obtains at run time (shapeless
    here): only its registration when it is obtained can catch it."""
    canary = f"plain{uuid.uuid4().hex}"
    client = aiecs_redis.client()
    with EchoingVertex(access_token=canary) as fake:
        worker = start_worker(loglevel="DEBUG", env={
            "VERTEX_PROJECT_ID": fake.project, "VERTEX_LOCATION": fake.location,
            "VERTEX_BASE_URL": fake.base_url,
            "GOOGLE_APPLICATION_CREDENTIALS": fake.write_credentials(tmp_path), **RETRY_ENV,
        })
        pubsub = PubSubCapture(client)
        results: list[str] = []

        def check(input_data, expect, error=None, task_name="chat"):
            terminal, events, result = run(client, "vertex", task_name, input_data, expect,
                                           error)
            results.append(result)
            return terminal, events

        for stream in (False, True):
            fake.script(GoogleError(401, "Request had invalid authentication credentials"))
            check(chat(stream), "failed", "AuthenticationError")
            fake.script(*[GoogleError(429, "quota", retry_delay="0.1s",
                                      headers={"retry-after": "0.1"})] * 2)
            check(chat(stream), "failed", "RateLimitError")
            fake.script(*[GoogleError(500, "internal")] * 2)
            check(chat(stream), "failed", "ProviderServerError")
            fake.script(GoogleError(400, "invalid argument"))
            check(chat(stream), "failed", "InvalidRequestError")
            fake.script(Text(f"the token is {canary} indeed"))
            terminal, _ = check(chat(stream), "completed")
            assert terminal["result"]["text"] == "the token is [redacted] indeed"
        fake.script(Cut(after_chunks=3, text=f"cut {canary} here and more"))
        terminal, _ = check(chat(stream=True), "failed", "StreamInterruptedError")
        assert terminal["partial_output"] == "cut [redacted] here"
        fake.script(GoogleError(403, "permission denied"))
        check({"model": "text-embedding-005", "texts": ["a"]}, "failed", "AuthenticationError",
              task_name="embed")

        captured = pubsub.close()
        log = worker.log()
        api = fake.api_requests()
        assert api[0].headers["authorization"] == f"Bearer {canary}"  # it was sent
    assert "HTTP Request: POST" in log and "x-request-id" in log, log[-3000:]
    assert "[redacted]" in log
    assert_nowhere([canary], client=client, pubsub=captured, results="\n".join(results),
                   log=log)
