"""The chat contract's parts for OpenAI-compatible servers and Gemini: a named
``tool_choice``, tool calls carrying a provider signature, and usage that says it was
estimated (never priced)."""

from __future__ import annotations

import json

import pytest
from aiecs_core import Usage
from aiecs_core.llm import ChatInput, NamedToolChoice, ToolCall, make_usage
from pydantic import ValidationError

USER = [{"role": "user", "content": "hi"}]
TOOL = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}


def test_named_tool_choice_in_the_openai_form():
    data = ChatInput.model_validate(
        {"model": "m", "messages": USER, "tools": [TOOL],
         "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    )
    assert isinstance(data.tool_choice, NamedToolChoice)
    assert data.tool_choice.model_dump() == {"type": "function",
                                             "function": {"name": "get_weather"}}
    for word in ("auto", "none", "required"):
        assert ChatInput.model_validate(
            {"model": "m", "messages": USER, "tool_choice": word}).tool_choice == word


@pytest.mark.parametrize("choice", [
    {"type": "function", "function": {"name": "not_a_tool"}},
    {"type": "tool", "function": {"name": "get_weather"}},
    {"function": {"name": "get_weather"}, "extra": 1},
    "any",
])
def test_a_bad_tool_choice_is_rejected(choice):
    with pytest.raises(ValidationError):
        ChatInput.model_validate(
            {"model": "m", "messages": USER, "tools": [TOOL], "tool_choice": choice})


def test_tool_call_signature_round_trips_and_is_left_out_when_absent():
    assert ToolCall(id="a", name="f", arguments="{}").model_dump() == {
        "id": "a", "name": "f", "arguments": "{}"}
    signed = ToolCall(id="a", name="f", arguments="{}", signature="c2ln")
    dumped = json.loads(signed.model_dump_json())
    assert dumped["signature"] == "c2ln"
    assert ToolCall.model_validate(dumped) == signed


def test_estimated_usage_says_so_and_is_never_priced(monkeypatch):
    monkeypatch.setenv("AIECS_PRICES", json.dumps({"p/m": {"input": 1.0, "output": 1.0}}))
    reported = make_usage("p", "m", 1000, 1000)
    estimated = make_usage("p", "m", 1000, 1000, estimated=True)
    assert (reported.estimated, reported.cost) == (False, 0.002)
    assert (estimated.estimated, estimated.cost) == (True, None)
    assert estimated.model_dump()["estimated"] is True
    total = reported + estimated
    assert total.estimated and total.cost == 0.002  # partly estimated: only the known cost
    assert not (reported + reported).estimated
    assert Usage(provider="p", model="m").estimated is False


def test_tools_in_the_openai_form_are_the_short_form():
    nested = {"type": "function", "function": {**TOOL, "description": "Weather", "strict": True}}
    data = ChatInput.model_validate({"model": "m", "messages": USER, "tools": [nested, TOOL]})
    assert data.tools[0].model_dump() == {**TOOL, "description": "Weather", "strict": True}
    assert data.tools[1].name == "get_weather" and data.tools[1].strict is None


@pytest.mark.parametrize(("tool", "words"), [
    ({"type": "code_interpreter", "function": TOOL}, "only 'function' tools"),
    ({"type": "function", "function": TOOL, "extra": 1}, "not 'extra'"),
    ({"type": "function", "function": "get_weather"}, "'function' must be an object"),
])
def test_a_bad_openai_form_tool_says_why(tool, words):
    with pytest.raises(ValidationError, match=words):
        ChatInput.model_validate({"model": "m", "messages": USER, "tools": [tool]})
