"""Provider fakes that echo the caller's credential back, everywhere they can: the worst a
provider (or a proxy in front of it) could do, for the "secrets never leave the worker"
canary tests.

Every response, error or not, streamed or not, carries the credential in ``x-request-id``
(which the openai SDK turns into ``APIStatusError.request_id``) and in other headers
(``x-echo-authorization: Bearer <key>``, ``openai-organization``, ``set-cookie``), and
every error message and body quotes it. :class:`StreamError` scripts an error event
inside a 200 stream (OpenAI wire), whose message quotes it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.support.fake_openai import FakeOpenAI, _OpenAIHandler
from tests.support.fake_vertex import FakeVertex, _VertexHandler

__all__ = ["EchoingOpenAI", "EchoingVertex", "StreamError"]


@dataclass
class StreamError:
    """A 200 stream that sends ``before`` content chunks, then an error event."""

    before: list[str]
    message: str = "the model crashed"


class _Echo:
    """Mixed into a handler: ``secret()`` is echoed in headers and error messages."""

    def secret(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def send_header(self, keyword: str, value: str) -> None:
        if keyword.lower() == "x-request-id":
            value = self.secret()
        super().send_header(keyword, value)  # type: ignore[misc]

    def end_headers(self) -> None:
        key = self.secret()
        if not getattr(self, "_echoed", False):
            self._echoed = True
            if b"x-request-id" not in b"".join(getattr(self, "_headers_buffer", [])).lower():
                super().send_header("x-request-id", key)  # type: ignore[misc]
            super().send_header("x-echo-authorization", f"Bearer {key}")  # type: ignore[misc]
            super().send_header("openai-organization", key)  # type: ignore[misc]
            super().send_header("set-cookie", f"session={key}; Path=/")  # type: ignore[misc]
        super().end_headers()  # type: ignore[misc]

    def send_response(self, code: int, message: str | None = None) -> None:
        self._echoed = False
        super().send_response(code, message)  # type: ignore[misc]

    def _echo(self, message: str) -> str:
        key = self.secret()
        return f"{message} (request by key {key}; Authorization: Bearer {key})"


class _EchoOpenAIHandler(_Echo, _OpenAIHandler):
    server_fake: EchoingOpenAI

    def secret(self) -> str:
        # what the client sent, as a real echo would (not what the fake expects)
        return (self.headers.get("authorization") or "").removeprefix("Bearer ")

    def _error(self, status: int, message: str, *args: Any, **kwargs: Any) -> None:
        super()._error(status, self._echo(message), *args, **kwargs)

    def _chat_stream(self, body: dict, reply: Any, model: str, prompt_tokens: int) -> None:
        if not isinstance(reply, StreamError):
            return super()._chat_stream(body, reply, model, prompt_tokens)
        self._start_sse()
        for piece in reply.before:
            self._sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 0,
                       "model": model, "choices": [{"index": 0, "delta": {"content": piece},
                                                    "finish_reason": None}]})
        self._sse({"error": {"message": self._echo(reply.message), "type": "server_error",
                             "key": self.secret()}})
        return self._end_chunked()


class EchoingOpenAI(FakeOpenAI):
    """:class:`FakeOpenAI` echoing the bearer key it is sent."""

    handler = _EchoOpenAIHandler


class _EchoVertexHandler(_Echo, _VertexHandler):
    server_fake: EchoingVertex

    def secret(self) -> str:
        return self.server_fake.access_token

    def _error(self, status: int, message: str, *args: Any, **kwargs: Any) -> None:
        super()._error(status, self._echo(message), *args, **kwargs)


class EchoingVertex(FakeVertex):
    """:class:`FakeVertex` whose OAuth access token is ``access_token``, echoed back."""

    handler = _EchoVertexHandler

    def __init__(self, access_token: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.access_token = access_token
