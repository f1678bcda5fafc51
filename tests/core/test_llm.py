"""aiecs_core.llm: the shared chat/embed contract and the pure helpers providers use."""

from __future__ import annotations

import email.utils

import pytest
from aiecs_core import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
    ModelNotFoundError,
    ProviderServerError,
    RateLimitError,
)
from aiecs_core.llm import (
    PRICES_ENV,
    ChatInput,
    ChatMessage,
    EmbedInput,
    ToolCall,
    chat_token_estimate,
    error_for_status,
    estimate_tokens,
    make_usage,
    parse_retry_after,
    price_for,
    redact,
)
from pydantic import ValidationError

# --- error_for_status -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError), (409, InvalidRequestError), (413, InvalidRequestError),
        (422, InvalidRequestError), (418, InvalidRequestError), (None, InvalidRequestError),
        (401, AuthenticationError), (403, AuthenticationError),
        (404, ModelNotFoundError),
        (429, RateLimitError),
        (408, ProviderServerError), (500, ProviderServerError), (502, ProviderServerError),
        (503, ProviderServerError), (529, ProviderServerError),
    ],
)
def test_error_for_status(status, cls):
    exc = error_for_status(status, "the provider said no", provider="openai", request_id="r1")
    assert type(exc) is cls
    assert str(exc) == "the provider said no"
    assert exc.provider == "openai" and exc.status_code == status
    assert exc.details.get("request_id") == "r1"
    assert type(exc)(*exc.args).details == exc.details


def test_error_for_status_keeps_retry_after_for_rate_limits_only():
    assert error_for_status(429, "m", provider="p", retry_after=3.0).retry_after == 3.0
    assert "retry_after" not in error_for_status(503, "m", provider="p", retry_after=3.0).details


def test_error_for_status_ignores_message_text():
    # decided by the code, never the text
    exc = error_for_status(400, "rate limit exceeded, 429, try again", provider="p")
    assert type(exc) is InvalidRequestError and not exc.is_retryable


# --- parse_retry_after ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        (None, None),
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"RETRY-AFTER": "0"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),  # ms wins
        ({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0),  # unreadable ms: fall back
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "tomorrow-ish"}, None),
    ],
)
def test_parse_retry_after(headers, seconds):
    assert parse_retry_after(headers) == seconds


def test_parse_retry_after_http_date():
    now = 1_700_000_000.0
    header = {"Retry-After": email.utils.formatdate(now + 30, usegmt=True)}
    assert parse_retry_after(header, now=now) == pytest.approx(30.0)
    past = {"Retry-After": email.utils.formatdate(now - 30, usegmt=True)}
    assert parse_retry_after(past, now=now) == 0.0


# --- redact -----------------------------------------------------------------------------------


def test_redact_removes_given_secrets_and_key_shaped_strings():
    text = "sk-proj-abcdefghijklmnop failed in lab; xai-ABCDEFGH1234 AIzaSyA1234567890 hunter22"
    out = redact(text, ["hunter22", None, "ab"])  # too-short secrets are not redacted
    assert "sk-proj-abcdefghijklmnop" not in out and "xai-ABCDEFGH1234" not in out
    assert "AIzaSyA1234567890" not in out and "hunter22" not in out
    assert out.count("[redacted]") == 4
    assert out == "[redacted] failed in lab; [redacted] [redacted] [redacted]"


def test_redact_leaves_ordinary_text():
    assert redact("the task failed: skip this step") == "the task failed: skip this step"


# --- prices and usage -------------------------------------------------------------------------


def test_no_prices_means_no_cost(monkeypatch):
    monkeypatch.delenv(PRICES_ENV, raising=False)
    assert price_for("openai", "gpt-4o") is None
    usage = make_usage("openai", "gpt-4o", 100, 50)
    assert usage.cost is None and (usage.input_tokens, usage.output_tokens) == (100, 50)


def test_prices_from_the_environment(monkeypatch):
    monkeypatch.setenv(
        PRICES_ENV, '{"openai/gpt-4o": {"input": 2.5, "output": 10}, "xai/grok": {"input": 1}}'
    )
    assert price_for("openai", "gpt-4o") == (2.5, 10.0)
    assert price_for("xai", "grok") == (1.0, 0.0)
    assert price_for("openai", "gpt-4o-2024-08-06", "gpt-4o") == (2.5, 10.0)  # requested model
    usage = make_usage("openai", "gpt-4o", 1_000_000, 500_000)
    assert usage.cost == pytest.approx(2.5 + 5.0)
    usage = make_usage("openai", "gpt-4o-2024-08-06", 1000, 0, requested_model="gpt-4o")
    assert usage.cost == pytest.approx(0.0025)
    assert make_usage("openai", "gpt-4o", 1000, 1000, estimated=True).cost is None
    # the table follows the environment
    monkeypatch.setenv(PRICES_ENV, "{}")
    assert price_for("openai", "gpt-4o") is None


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("not json", "AIECS_PRICES is invalid"),
        ("[1, 2]", "must be a JSON object"),
        ('{"gpt-4o": {"input": 1}}', "must be 'provider/model'"),
        ('{"openai/gpt-4o": {"input": 1, "cached": 0.5}}', "unknown fields ['cached']"),
        ('{"openai/gpt-4o": {"input": -1}}', "finite, non-negative"),
        ('{"openai/gpt-4o": {"input": "cheap"}}', "AIECS_PRICES is invalid"),
    ],
)
def test_invalid_prices_name_the_variable(monkeypatch, raw, fragment):
    monkeypatch.setenv(PRICES_ENV, raw)
    with pytest.raises(ConfigurationError) as info:
        price_for("openai", "gpt-4o")
    assert fragment in str(info.value) and info.value.env_var == PRICES_ENV


def test_make_usage_clamps_negative_counts(monkeypatch):
    monkeypatch.delenv(PRICES_ENV, raising=False)
    usage = make_usage("p", "m", -5, -1)
    assert (usage.input_tokens, usage.output_tokens) == (0, 0)


# --- token estimates --------------------------------------------------------------------------


def test_estimate_tokens():
    assert [estimate_tokens(t) for t in (None, "", "a", "abcd", "abcde")] == [0, 0, 1, 1, 2]


def test_chat_token_estimate_counts_input_and_maximum_output():
    data = ChatInput(
        model="m",
        messages=[{"role": "user", "content": "a" * 40}],
        max_output_tokens=100,
    )
    assert chat_token_estimate(data) == 4 + 10 + 100
    default = ChatInput(model="m", messages=[{"role": "user", "content": ""}])
    assert chat_token_estimate(default, default_output=7) == 4 + 0 + 7


# --- chat and embed inputs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ({"role": "user"}, "a user message needs content"),
        ({"role": "system"}, "a system message needs content"),
        ({"role": "assistant"}, "an assistant message needs content or tool_calls"),
        ({"role": "tool", "content": "42"}, "a tool message needs tool_call_id and content"),
        (
            {"role": "user", "content": "x",
             "tool_calls": [{"id": "1", "name": "f", "arguments": "{}"}]},
            "only assistant messages carry tool_calls",
        ),
        ({"role": "robot", "content": "x"}, "Input should be 'system', 'user', 'assistant'"),
    ],
)
def test_chat_message_rules(message, error):
    with pytest.raises(ValidationError) as info:
        ChatMessage.model_validate(message)
    assert error in str(info.value)


def test_valid_chat_messages():
    call = ToolCall(id="c1", name="lookup", arguments='{"q": 1}')
    assistant = ChatMessage(role="assistant", tool_calls=[call])
    tool = ChatMessage(role="tool", tool_call_id="c1", content="result", name="lookup")
    assert assistant.content is None and tool.tool_call_id == "c1"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"messages": []}, "messages"),
        ({"model": ""}, "model"),
        ({"temperature": 2.5}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"top_k": 3}, "top_k"),
    ],
)
def test_chat_input_constraints(fields, field):
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ValidationError) as info:
        ChatInput.model_validate({**base, **fields})
    assert {str(e["loc"][0]) for e in info.value.errors()} == {field}


def test_embed_input_constraints():
    assert EmbedInput(model="e", texts=["a"]).dimensions is None
    with pytest.raises(ValidationError):
        EmbedInput(model="e", texts=[])
    with pytest.raises(ValidationError):
        EmbedInput(model="e", texts=["a"], dimensions=0)
