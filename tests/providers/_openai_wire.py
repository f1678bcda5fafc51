"""Tests of an OpenAI-wire provider (OpenAI, xAI) with the real openai SDK against
tests.support.fake_openai. A provider's test module subclasses :class:`OpenAIWireCases`
(and :class:`OpenAIWireConformance`) and provides the ``service_cls`` fixture.

Everything async runs inside one ``asyncio.run`` per test, as in a worker (one loop per
process, the client reused).
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import time

import pytest
from aiecs_core import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderConnectionError,
    ProviderServerError,
    ProviderTimeoutError,
    RateLimitError,
)
from aiecs_core.testing import ServiceConformance

from tests.providers._common import StreamCases, call, run
from tests.support.fake_openai import (
    Cut,
    Error,
    FakeOpenAI,
    Generate,
    Hang,
    Text,
    ToolCalls,
    Vectors,
    vector_for,
)
from tests.support.redis_server import free_port

USER = [{"role": "user", "content": "hello there"}]


class OpenAIWireCases(StreamCases):
    model = "m"
    Cut = Cut
    Hang = Hang
    #: Subclasses set these to their provider's names.
    provider: str
    api_key_env: str
    base_url_env: str
    max_tokens_param: str
    #: The client's base URL when ``base_url_env`` is unset.
    default_base_url: str

    @pytest.fixture
    def fake(self):
        with FakeOpenAI() as server:
            yield server

    @pytest.fixture
    def service(self, fake, monkeypatch, service_cls):
        monkeypatch.setenv(self.api_key_env, fake.api_key)
        monkeypatch.setenv(self.base_url_env, fake.base_url)
        return service_cls()

    # -- chat ------------------------------------------------------------------------------------
    def test_chat_request_shape_and_result(self, service, fake):
        data = {
            "model": "m-1",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hello there"},
                {"role": "assistant", "content": "hi"},
                {"role": "user", "content": "how are you"},
            ],
            "temperature": 0.3,
            "max_output_tokens": 50,
        }
        result, ctx = run(service, lambda: call(service, "chat", data))
        assert result["text"] == "echo: how are you"
        assert result["finish_reason"] == "stop"
        assert result["tool_calls"] == [] and result["parsed"] is None
        assert result["usage"] == {
            "provider": self.provider,
            "model": "m-1",
            "input_tokens": 8,
            "output_tokens": 4,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "cost": None,
            "estimated": False,
        }
        assert [u.model_dump() for u in ctx.usage] == [result["usage"]]
        assert not [e for e in ctx.events if e.type == "stream"]
        (req,) = fake.requests
        assert req.path == "/v1/chat/completions"
        assert req.headers["authorization"] == f"Bearer {fake.api_key}"
        assert req.body["model"] == "m-1"
        assert [m["role"] for m in req.body["messages"]] == ["system", "user", "assistant", "user"]
        assert req.body["temperature"] == 0.3
        # a base URL other than the provider's own: the limit goes as max_tokens
        assert req.body["max_tokens"] == 50 and "max_completion_tokens" not in req.body
        assert "stream" not in req.body and "tools" not in req.body

    def test_chat_request_is_the_one_the_sdks_create_sends(self, service, fake):
        """A non-streamed chat goes through the SDK's request path without its parameter
        transform (aiecs_openai_compat.service, ``_post_chat``): the server receives the
        same request ``chat.completions.create`` would send with the same parameters,
        body and headers, tools, tool choice and response format included."""
        from aiecs_core.llm import ChatInput

        data = {
            "model": "m-1",
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "weather in Paris?"}],
            "temperature": 0.2,
            "max_output_tokens": 64,
            "tools": [{"name": "weather", "description": "the weather",
                       "parameters": {"type": "object",
                                      "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "function", "function": {"name": "weather"}},
        }
        fake.script(ToolCalls([("weather", '{"city": "Paris"}')]),
                    ToolCalls([("weather", '{"city": "Paris"}')]))

        async def both():
            result, _ = await call(service, "chat", data)
            client = await service.aclient()
            params = service._chat_params(ChatInput.model_validate(data))
            await client.chat.completions.create(**params)
            return result

        result = run(service, both)
        assert [c["name"] for c in result["tool_calls"]] == ["weather"]
        ours, sdks = fake.requests
        assert ours.path == sdks.path == "/v1/chat/completions"
        assert ours.body == sdks.body and ours.body["tools"] and ours.body["tool_choice"]
        varying = {"content-length"}  # the same body, serialized alike: checked above
        assert {k: v for k, v in ours.headers.items() if k not in varying} == {
            k: v for k, v in sdks.headers.items() if k not in varying}

    @pytest.mark.parametrize("reply", [[{"choices": []}], "OK", {"id": "x", "choices": []}])
    def test_a_success_reply_that_is_no_completion_is_a_server_error(self, service, fake,
                                                                       reply):
        """A 200 whose JSON is not a completion object (a gateway's list, a bare string, no
        choices) is the provider's error, said so, not a crash inside the operation."""
        fake.script(Error(200, body=reply))
        result, _ = run(service, lambda: call(service, "chat", {
            "model": "m-1", "messages": [{"role": "user", "content": "hi"}]}))
        assert isinstance(result, ProviderServerError), result
        assert self.provider in str(result)
        assert "JSON object" in str(result) or "no choices" in str(result)

    def test_cost_only_when_a_price_is_configured(self, service, fake, monkeypatch):
        monkeypatch.setenv(
            "AIECS_PRICES", json.dumps({f"{self.provider}/m-1": {"input": 2.0, "output": 8.0}})
        )

        async def scenario():
            priced, _ = await call(service, "chat", {"model": "m-1", "messages": USER})
            unpriced, _ = await call(service, "chat", {"model": "m-2", "messages": USER})
            return priced, unpriced

        priced, unpriced = run(service, scenario)
        usage = priced["usage"]
        assert usage["cost"] == pytest.approx(
            (usage["input_tokens"] * 2.0 + usage["output_tokens"] * 8.0) / 1e6
        )
        assert unpriced["usage"]["cost"] is None

    def test_client_is_created_once_and_its_connection_reused(self, service, fake):
        async def scenario():
            first = service.client()
            for _ in range(3):
                result, _ = await call(service, "chat", {"model": "m", "messages": USER})
                assert result["text"] == "echo: hello there"
            return first is service.client()

        assert run(service, scenario)
        assert len({r.client_port for r in fake.requests}) == 1, "a new connection per call"

    def test_stream_pushes_deltas_and_reports_usage(self, service, fake):
        fake.script(Text("the quick brown fox"))
        data = {"model": "m", "messages": USER, "stream": True}
        result, ctx = run(service, lambda: call(service, "chat", data))
        deltas = [e.delta for e in ctx.events if e.type == "stream"]
        assert deltas == ["the", " quick", " brown", " fox"]
        assert result["text"] == "the quick brown fox"
        assert result["finish_reason"] == "stop"
        assert result["usage"]["input_tokens"] == 2 and result["usage"]["output_tokens"] == 4
        (req,) = fake.requests
        assert req.body["stream"] is True
        assert req.body["stream_options"] == {"include_usage": True}

    def test_structured_output(self, service, fake):
        schema = {
            "type": "object",
            "properties": {"sentiment": {"type": "string"}},
            "required": ["sentiment"],
            "additionalProperties": False,
        }
        fake.script(Text('{"sentiment": "positive"}'))
        data = {
            "model": "m",
            "messages": USER,
            "response_format": {"name": "analysis", "json_schema": schema},
        }
        result, _ = run(service, lambda: call(service, "chat", data))
        assert result["parsed"] == {"sentiment": "positive"}
        assert fake.requests[0].body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "analysis", "schema": schema, "strict": True},
        }

    @pytest.mark.parametrize("stream", [False, True])
    def test_tool_calls_are_returned_not_executed(self, service, fake, stream):
        fake.script(
            ToolCalls([("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "CET"}')])
        )
        tool = {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
        data = {
            "model": "m",
            "messages": USER,
            "tools": [tool],
            "tool_choice": "auto",
            "stream": stream,
        }
        result, _ = run(service, lambda: call(service, "chat", data))
        assert result["finish_reason"] == "tool_calls"
        assert result["tool_calls"] == [
            {"id": "call_0", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"id": "call_1", "name": "get_time", "arguments": '{"tz": "CET"}'},
        ]
        req = fake.requests[0].body
        assert req["tools"] == [{"type": "function", "function": tool}]
        assert req["tool_choice"] == "auto"

    def test_tool_results_are_sent_back(self, service, fake):
        messages = [
            *USER,
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "call_0", "name": "get_weather", "arguments": '{"city": "Paris"}'}
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_0",
                "name": "get_weather",
                "content": '{"temp": 21}',
            },
        ]
        result, _ = run(
            service, lambda: call(service, "chat", {"model": "m", "messages": messages})
        )
        assert result["text"] == 'tool results: {"temp": 21}'
        sent = fake.requests[0].body["messages"]
        assert sent[1] == {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        }
        assert sent[2] == {"role": "tool", "tool_call_id": "call_0", "content": '{"temp": 21}'}

    # -- embeddings ------------------------------------------------------------------------------
    def test_embed_batches_to_the_limit_and_keeps_order(self, service, fake, monkeypatch):
        monkeypatch.setattr(type(service), "embed_batch_size", 3)
        texts = [f"text number {i}" for i in range(7)]
        result, ctx = run(
            service,
            lambda: call(service, "embed", {"model": "e-1", "texts": texts, "dimensions": 4}),
        )
        assert result["vectors"] == [vector_for(t, 4) for t in texts]
        assert [len(r.body["input"]) for r in fake.requests] == [3, 3, 1]
        assert all(r.path == "/v1/embeddings" for r in fake.requests)
        assert all(
            r.body["dimensions"] == 4 and r.body["encoding_format"] == "float"
            for r in fake.requests
        )
        assert result["usage"]["input_tokens"] == 21 and result["usage"]["output_tokens"] == 0
        assert len(ctx.usage) == 3  # one record per provider call
        progress = [e.progress for e in ctx.events if e.type == "progress"]
        assert progress == pytest.approx([1 / 3, 2 / 3, 1.0])

    def test_an_embedding_call_that_never_answers_is_reported_while_waiting(
            self, service, fake, monkeypatch):
        """Issue 21: as for chat, a server that never answers an embedding request is
        reported every AIECS_WAIT_NOTICE seconds, naming provider, host and model."""
        monkeypatch.setenv("AIECS_WAIT_NOTICE", "0.3")
        fake.script(Hang())
        error, ctx = run(service, lambda: call(
            service, "embed", {"model": "e-slow", "texts": ["a"]}, deadline=1.0))
        assert isinstance(error, ProviderTimeoutError), error
        host = fake.base_url.split("://", 1)[1].split("/", 1)[0]
        notices = [e.message for e in ctx.events if e.type == "progress"]
        assert notices and re.fullmatch(
            rf"{self.provider}: waiting for {re.escape(host)} \(model 'e-slow'\): no answer "
            r"yet after 0\.[3-6] s \(the request gives up after [\d.]+ s\)", notices[0]), notices

    def test_embed_rejects_a_short_answer(self, service, fake):
        fake.script(Vectors([[0.0, 1.0]]))
        result, _ = run(
            service, lambda: call(service, "embed", {"model": "e", "texts": ["a", "b"]})
        )
        assert isinstance(result, ProviderServerError)

    # -- errors ------------------------------------------------------------------------------------
    @pytest.mark.parametrize(
        ("status", "cls"),
        [
            (400, InvalidRequestError),
            (422, InvalidRequestError),
            (401, AuthenticationError),
            (403, AuthenticationError),
            (404, ModelNotFoundError),
            (500, ProviderServerError),
            (503, ProviderServerError),
        ],
    )
    def test_http_errors_by_status_and_no_sdk_retries(self, service, fake, status, cls):
        kind = "server_error" if status >= 500 else "invalid_request_error"
        fake.script(Error(status, "nope", type=kind))
        error, _ = run(
            service, lambda: call(service, "chat", {"model": "m", "messages": USER})
        )
        assert type(error) is cls
        assert error.status_code == status and error.provider == self.provider
        assert error.is_retryable == (status >= 500)
        assert "nope" in error.message
        assert len(fake.requests) == 1, "the SDK must not retry: the worker does"

    @pytest.mark.parametrize(
        ("headers", "expected"),
        [
            ({"retry-after": "3"}, 3.0),
            ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
            ({}, None),
        ],
    )
    def test_429_carries_retry_after(self, service, fake, headers, expected):
        fake.script(Error(429, "slow down", headers=headers, type="requests"))
        error, _ = run(
            service, lambda: call(service, "chat", {"model": "m", "messages": USER})
        )
        assert isinstance(error, RateLimitError) and error.is_retryable
        assert error.retry_after == expected
        assert len(fake.requests) == 1

    def test_rejected_key_never_appears_in_the_error(self, service, fake, monkeypatch):
        secret = "sk-live-SECRETSECRET0123456789"
        monkeypatch.setenv(self.api_key_env, secret)
        error, _ = run(
            service, lambda: call(service, "chat", {"model": "m", "messages": USER})
        )
        assert isinstance(error, AuthenticationError)
        for text in (error.message, repr(error), json.dumps(error.to_info().model_dump())):
            assert secret not in text and "SECRETSECRET" not in text

    def test_missing_key_is_a_configuration_error_naming_the_variable(
        self, service_cls, monkeypatch
    ):
        monkeypatch.delenv(self.api_key_env, raising=False)
        service = service_cls()
        error, _ = run(
            service, lambda: call(service, "chat", {"model": "m", "messages": USER})
        )
        assert isinstance(error, ConfigurationError)
        assert error.env_var == self.api_key_env and self.api_key_env in error.message

    def test_hanging_server_times_out_within_the_deadline(self, service, fake):
        fake.script(Hang())
        started = time.monotonic()
        error, _ = run(
            service, lambda: call(service, "chat", {"model": "m", "messages": USER}, deadline=0.5)
        )
        assert isinstance(error, ProviderTimeoutError) and error.is_retryable
        # The request timeout is derived from the task's deadline (not the SDK's 600 s).
        assert time.monotonic() - started < 10

    def test_connection_refused_is_retryable(self, service_cls, monkeypatch):
        monkeypatch.setenv(self.api_key_env, "sk-test")
        monkeypatch.setenv(self.base_url_env, f"http://127.0.0.1:{free_port()}/v1")
        service = service_cls()
        error, _ = run(
            service, lambda: call(service, "chat", {"model": "m", "messages": USER})
        )
        assert isinstance(error, ProviderConnectionError) and error.is_retryable

    # -- servers that are not the provider's own -------------------------------------------------
    def serve(self, monkeypatch, service_cls, server: FakeOpenAI, **env: str):
        """A fresh service pointed at ``server`` (with extra settings)."""
        monkeypatch.setenv(self.api_key_env, server.api_key)
        monkeypatch.setenv(self.base_url_env, server.base_url)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        return service_cls()

    def test_limit_field_by_base_url_and_setting(self, service_cls, monkeypatch):
        monkeypatch.setenv(self.api_key_env, "sk-test")
        setting = service_cls.max_tokens_field_env
        monkeypatch.delenv(setting, raising=False)
        (host,) = service_cls.official_hosts
        for base_url, field in [
            (None, self.max_tokens_param),  # the default: the provider's own endpoint
            (f"https://{host}/v1", self.max_tokens_param),
            (f"https://{host.upper()}:443/v1/", self.max_tokens_param),
            ("http://127.0.0.1:8000/v1", "max_tokens"),
            (f"https://{host}.gateway.example/v1", "max_tokens"),
        ]:
            if base_url is None:
                monkeypatch.delenv(self.base_url_env, raising=False)
            else:
                monkeypatch.setenv(self.base_url_env, base_url)
            assert service_cls().limit_field() == field, base_url
        for forced in ("max_tokens", "max_completion_tokens"):
            monkeypatch.setenv(setting, forced)
            assert service_cls().limit_field() == forced
        monkeypatch.setenv(setting, "max_new_tokens")
        with pytest.raises(ConfigurationError) as info:
            service_cls().limit_field()
        assert info.value.env_var == setting and setting in info.value.message

    @pytest.mark.parametrize("stream", [False, True])
    @pytest.mark.parametrize(
        ("understood", "setting"),
        [("max_tokens", None), ("max_completion_tokens", "max_completion_tokens")],
    )
    def test_output_limit_holds_on_a_server_knowing_one_field(
        self, service_cls, monkeypatch, understood, setting, stream
    ):
        """The server ignores the field it does not know, and then runs to its context."""
        with FakeOpenAI(limit_fields=(understood,)) as server:
            env = {} if setting is None else {service_cls.max_tokens_field_env: setting}
            service = self.serve(monkeypatch, service_cls, server, **env)
            server.script(Generate(2000))
            data = {"model": "m", "messages": USER, "max_output_tokens": 16, "stream": stream}
            result, ctx = run(service, lambda: call(service, "chat", data))
        assert server.limits_understood == [16]
        assert len(result["text"].split()) == 16 and result["finish_reason"] == "length"
        assert result["usage"]["output_tokens"] == 16

    def test_a_400_naming_the_limit_field_is_retried_once_with_the_other(
        self, service_cls, monkeypatch
    ):
        with FakeOpenAI(limit_fields=("max_completion_tokens",), refuse_other_limit=True) as srv:
            service = self.serve(monkeypatch, service_cls, srv)
            data = {"model": "m", "messages": USER, "max_output_tokens": 5}

            async def scenario():
                first, _ = await call(service, "chat", data)
                second, _ = await call(service, "chat", data)
                return first, second

            first, second = run(service, scenario)
        assert first["text"] == second["text"] == "echo: hello there"
        sent = [next(f for f in ("max_tokens", "max_completion_tokens") if f in r.body)
                for r in srv.requests]
        # refused, retried with the other field, then that one from the start
        assert sent == ["max_tokens", "max_completion_tokens", "max_completion_tokens"]

    def test_a_forced_limit_field_is_never_swapped(self, service_cls, monkeypatch):
        with FakeOpenAI(limit_fields=("max_completion_tokens",), refuse_other_limit=True) as srv:
            service = self.serve(monkeypatch, service_cls, srv,
                                 **{service_cls.max_tokens_field_env: "max_tokens"})
            data = {"model": "m", "messages": USER, "max_output_tokens": 5}
            error, _ = run(service, lambda: call(service, "chat", data))
        assert isinstance(error, InvalidRequestError) and "max_tokens" in error.message
        assert len(srv.requests) == 1

    # -- streamed usage ----------------------------------------------------------------------------
    def test_a_server_refusing_stream_options_is_asked_once_then_never(
        self, service_cls, monkeypatch
    ):
        with FakeOpenAI(accepts_stream_options=False) as srv:
            service = self.serve(monkeypatch, service_cls, srv)
            data = {"model": "m", "messages": USER, "stream": True}

            async def scenario():
                return [await call(service, "chat", data) for _ in range(2)]

            (first, ctx), (second, _) = run(service, scenario)
        assert first["text"] == second["text"] == "echo: hello there"
        assert ["stream_options" in r.body for r in srv.requests] == [True, False, False]
        # no usage reported: estimated, and it says so (never priced)
        assert first["usage"]["estimated"] is True and first["usage"]["cost"] is None
        assert ctx.usage[0].estimated

    def test_another_400_to_a_stream_is_not_retried(self, service, fake):
        fake.script(Error(400, "messages[0] is too long", param="messages"),
                    Error(400, "bad request"))
        data = {"model": "m", "messages": USER, "stream": True}

        async def scenario():
            return [(await call(service, "chat", data))[0] for _ in range(2)]

        errors = run(service, scenario)
        assert all(isinstance(e, InvalidRequestError) for e in errors)
        assert ["stream_options" in r.body for r in fake.requests] == [True, True]

    def test_stream_options_named_in_error_param_is_dropped(self, service, fake):
        fake.script(Error(400, "Unknown parameter.", param="stream_options"))
        data = {"model": "m", "messages": USER, "stream": True}
        result, _ = run(service, lambda: call(service, "chat", data))
        assert result["text"] == "echo: hello there" and result["usage"]["estimated"]
        assert ["stream_options" in r.body for r in fake.requests] == [True, False]

    @pytest.mark.parametrize("mode", ["off", "on"])
    def test_stream_usage_setting(self, service_cls, monkeypatch, mode):
        with FakeOpenAI(accepts_stream_options=False) as srv:
            service = self.serve(monkeypatch, service_cls, srv,
                                 **{service_cls.stream_usage_env: mode})
            data = {"model": "m", "messages": USER, "stream": True}
            result, _ = run(service, lambda: call(service, "chat", data))
        if mode == "off":  # never asked: the usage is estimated
            assert [("stream_options" in r.body) for r in srv.requests] == [False]
            assert result["usage"]["estimated"] is True
        else:  # always asked, never retried without
            assert isinstance(result, InvalidRequestError)
            assert [("stream_options" in r.body) for r in srv.requests] == [True]

    def test_estimated_usage_is_not_priced_and_reported_usage_is(
        self, service, fake, monkeypatch
    ):
        monkeypatch.setenv(
            "AIECS_PRICES", json.dumps({f"{self.provider}/m": {"input": 1.0, "output": 1.0}})
        )
        fake.script(Text("with usage"), Text("without usage", usage=False))
        data = {"model": "m", "messages": USER, "stream": True}

        async def scenario():
            return [(await call(service, "chat", data))[0]["usage"] for _ in range(2)]

        reported, estimated = run(service, scenario)
        assert reported["estimated"] is False and reported["cost"] == pytest.approx(4e-6)
        assert estimated["estimated"] is True and estimated["cost"] is None

    @pytest.mark.parametrize("stream", [False, True])
    def test_cached_and_reasoning_tokens_from_the_usage_details(self, service, fake, stream):
        fake.script(Text("thought it through", usage_details={
            "prompt_tokens_details": {"cached_tokens": 3},
            "completion_tokens_details": {"reasoning_tokens": 7}}))
        data = {"model": "m", "messages": USER, "stream": stream}
        result, ctx = run(service, lambda: call(service, "chat", data))
        got = (result["usage"]["cached_tokens"], result["usage"]["reasoning_tokens"])
        assert got == (3, 7), (got, fake.requests[0].body)
        assert (ctx.usage[0].cached_tokens, ctx.usage[0].reasoning_tokens) == (3, 7)

    # -- named tool_choice and multi-turn tool use -------------------------------------------------
    @pytest.mark.parametrize("stream", [False, True])
    def test_named_tool_choice(self, service, fake, stream):
        tools = [{"name": "get_weather"}, {"name": "get_time"}]
        choice = {"type": "function", "function": {"name": "get_time"}}
        data = {"model": "m", "messages": USER, "tools": tools, "tool_choice": choice,
                "stream": stream}
        result, _ = run(service, lambda: call(service, "chat", data))
        assert fake.requests[0].body["tool_choice"] == choice
        assert [c["name"] for c in result["tool_calls"]] == ["get_time"]
        assert result["finish_reason"] == "tool_calls"

    def test_multi_turn_tool_use_round_trips(self, service, fake):
        tools = [{"name": "get_weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
        fake.script(ToolCalls([("get_weather", '{"city": "Paris"}'),
                               ("get_weather", '{"city": "Oslo"}')]))

        async def scenario():
            first, _ = await call(service, "chat", {"model": "m", "messages": USER,
                                                    "tools": tools})
            messages = [
                *USER,
                {"role": "assistant", "content": first["text"] or None,
                 "tool_calls": first["tool_calls"]},
                *({"role": "tool", "tool_call_id": c["id"], "name": c["name"],
                   "content": json.dumps({"temp": 20 + i})}
                  for i, c in enumerate(first["tool_calls"])),
            ]
            second, _ = await call(service, "chat", {"model": "m", "messages": messages,
                                                     "tools": tools})
            return second

        second = run(service, scenario)
        assert second["text"] == 'tool results: {"temp": 20} {"temp": 21}'
        sent = fake.requests[1].body["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
        assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_0", "call_1"]
        assert [m["tool_call_id"] for m in sent[2:]] == ["call_0", "call_1"]

    def test_a_tool_result_without_its_call_is_refused_by_the_server(self, service, fake):
        messages = [*USER, {"role": "tool", "tool_call_id": "call_9", "content": "{}"}]
        error, _ = run(service, lambda: call(service, "chat", {"model": "m",
                                                               "messages": messages}))
        assert isinstance(error, InvalidRequestError)  # the fake checks like the real API

    # -- 5xx that say the request is invalid ------------------------------------------------------
    @pytest.mark.parametrize(
        ("reply", "invalid"),
        [
            (Error(500, "bad schema", type="invalid_request_error"), True),
            (Error(500, "oops", type="BadRequestError", code=400), True),
            (Error(502, "upstream said so", type="None", code="400"), True),
            (Error(500, "x", body={"object": "error", "message": "m",
                                   "type": "BadRequestError", "code": 400}), True),
            (Error(500, "1 validation error for ChatRequest", type="server_error"), True),
            (Error(500, "Unsupported response_format", type="server_error"), True),
            (Error(500, "boom", type="server_error"), False),
            (Error(503, "overloaded", type="server_error", code="503"), False),
            (Error(500, "slow", type="server_error", code=429), False),
            (Error(500, "x", body={"detail": "Internal Server Error"}), False),
        ],
    )
    def test_a_5xx_saying_the_request_is_invalid_is_not_retried(
        self, service, fake, reply, invalid
    ):
        fake.script(reply)
        error, _ = run(service, lambda: call(service, "chat", {"model": "m", "messages": USER}))
        assert type(error) is (InvalidRequestError if invalid else ProviderServerError)
        assert error.is_retryable is (not invalid)
        assert error.status_code == reply.status

    # -- where a connection went -------------------------------------------------------------------
    def test_connection_errors_name_host_and_port_only(self, service_cls, monkeypatch):
        port = free_port()
        monkeypatch.setenv(self.api_key_env, "sk-live-KEYKEYKEY0123456789")
        monkeypatch.setenv(self.base_url_env,
                           f"http://user:hunter2@127.0.0.1:{port}/v1?api-key=QUERYSECRET")
        service = service_cls()
        error, _ = run(service, lambda: call(service, "chat", {"model": "m", "messages": USER}))
        assert isinstance(error, ProviderConnectionError)
        assert f"127.0.0.1:{port}" in error.message and error.details["endpoint"] == (
            f"127.0.0.1:{port}")
        text = json.dumps(error.to_info().model_dump()) + repr(error)
        for secret in ("KEYKEYKEY", "QUERYSECRET", "hunter2", "api-key", "/v1"):
            assert secret not in text, secret

    def test_timeouts_name_host_and_port(self, service, fake):
        fake.script(Hang())
        error, _ = run(service, lambda: call(service, "chat", {"model": "m", "messages": USER},
                                             deadline=0.3))
        assert isinstance(error, ProviderTimeoutError)
        assert f"127.0.0.1:{fake.port}" in error.message

    # -- plugin ------------------------------------------------------------------------------------
    def test_entry_point_and_service_names(self, service_cls):
        eps = importlib.metadata.entry_points(group="aiecs")
        (ep,) = [ep for ep in eps if ep.name == self.provider]
        assert ep.value == f"aiecs_providers_{self.provider}.plugin"
        assert (service_cls.mode, service_cls.name) == ("llm", self.provider)
        assert sorted(service_cls.operations) == ["chat", "embed"]

    def test_default_base_url(self, service_cls, monkeypatch):
        monkeypatch.setenv(self.api_key_env, "sk-test")
        monkeypatch.delenv(self.base_url_env, raising=False)
        client = service_cls().client()
        assert str(client.base_url) == self.default_base_url
        assert client.max_retries == 0

    def test_rate_limit_key(self, service):
        spec = type(service).operations["chat"]
        data = spec.input_model.model_validate(
            {"model": "m", "messages": USER, "max_output_tokens": 100}
        )
        key = service.rate_limit_key("chat", data)
        assert (key.provider, key.model) == (self.provider, "m")
        assert key.tokens > 100
        embed = (
            type(service)
            .operations["embed"]
            .input_model.model_validate({"model": "e", "texts": ["x" * 40, "y" * 40]})
        )
        assert service.rate_limit_key("embed", embed).tokens == 20

    def test_importing_the_plugin_does_not_import_the_sdk(self, service_cls):
        code = (
            f"import sys, {service_cls.__module__}; "
            "print(any(m == 'openai' or m.startswith('openai.') for m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert out.stdout.strip() == "False"

    def test_invalid_input_is_rejected_before_any_request(self, service_cls):
        from aiecs_core import InputValidationError, validate_input

        spec = service_cls.operations["chat"]
        for bad in (
            {"model": "m", "messages": []},
            {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
            {"model": "m", "messages": USER, "temperature": 3},
            {"model": "m", "messages": [{"role": "tool", "content": "x"}]},
        ):
            with pytest.raises(InputValidationError):
                validate_input(spec, bad)


class OpenAIWireConformance(ServiceConformance):
    """The conformance suite against the fake server. Subclasses set ``cases`` (their
    :class:`OpenAIWireCases` subclass), ``plugin_module``, ``chat_model`` and
    ``embed_model``."""

    cases: type[OpenAIWireCases]
    plugin_module: object
    chat_model: str
    embed_model: str

    @pytest.fixture
    def plugin(self):
        return self.plugin_module

    @pytest.fixture
    def examples(self, monkeypatch):
        provider = self.cases.provider
        with FakeOpenAI() as fake:
            monkeypatch.setenv(self.cases.api_key_env, fake.api_key)
            monkeypatch.setenv(self.cases.base_url_env, fake.base_url)
            yield {
                ("llm", provider, "chat"): {"model": self.chat_model, "messages": USER},
                ("llm", provider, "embed"): {"model": self.embed_model, "texts": ["a", "b"]},
            }
