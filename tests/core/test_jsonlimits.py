"""aiecs_core.jsonlimits: depth checks that cannot recurse, agreeing with the parser."""

from __future__ import annotations

import json

import pytest
from aiecs_core import jsonlimits
from aiecs_core.jsonlimits import (
    MAX_JSON_DEPTH,
    JsonDepthError,
    JsonTooLargeError,
    check_depth,
    loads,
    text_depth,
    value_depth,
)
from hypothesis import given
from hypothesis import strategies as st

from tests.support.props import PROPS, json_values, props


def nested(depth: int, leaf: object = 1) -> object:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize(("text", "depth"), [
    ("1", 0), ('"[[["', 0), ("[]", 1), ("{}", 1), ('{"a": [1]}', 2), ('[[], [[]]]', 3),
    (r'["\"[", ["]"]]', 2), (r'["\\", [[]]]', 3), ('[["unterminated', 2), ("]]][[", 0),
])
def test_text_depth(text, depth):
    assert text_depth(text) == depth
    assert text_depth(text.encode()) == depth


def test_hundred_thousand_deep_is_refused_without_recursion():
    text = "[" * 100_000 + "]" * 100_000
    assert text_depth(text, MAX_JSON_DEPTH) == MAX_JSON_DEPTH + 1
    with pytest.raises(JsonDepthError, match="nested deeper than 64 levels"):
        loads(text)
    with pytest.raises(JsonDepthError):
        loads(text.encode())
    value: list = []
    for _ in range(100_000):
        value = [value]
    assert value_depth(value, 64) == 65
    with pytest.raises(JsonDepthError):
        check_depth(value)


def test_self_containing_value_ends():
    loop: list = []
    loop.append(loop)
    assert value_depth(loop, 10) == 11


def test_size_is_checked_before_parsing():
    with pytest.raises(JsonTooLargeError, match="11 bytes, over the limit of 10"):
        loads('"' + "x" * 9 + '"', max_bytes=10)
    assert loads('"' + "x" * 8 + '"', max_bytes=10) == "x" * 8
    with pytest.raises(JsonTooLargeError):  # multi-byte characters count as bytes
        loads('"éééé"', max_bytes=8)


def test_limit_is_inclusive():
    assert loads(json.dumps(nested(MAX_JSON_DEPTH))) == nested(MAX_JSON_DEPTH)
    with pytest.raises(JsonDepthError):
        loads(json.dumps(nested(MAX_JSON_DEPTH + 1)))
    check_depth(nested(MAX_JSON_DEPTH))
    with pytest.raises(JsonDepthError):
        check_depth(nested(MAX_JSON_DEPTH + 1))


@PROPS
@given(json_values)
def test_text_and_value_depth_agree(value):
    text = json.dumps(value)
    assert text_depth(text) == value_depth(value) == value_depth(json.loads(text))
    assert loads(text) == json.loads(text)


@props(60)
@given(st.text(alphabet='[]{}",:\\ab1 ', max_size=200))
def test_any_text_either_parses_or_raises_value_error(text):
    """The scanner never crashes and never lets the parser recurse past the limit."""
    try:
        loads(text, max_depth=8)
    except ValueError:
        return
    assert text_depth(text) <= 8


@props(30)
@given(st.integers(0, 200), st.sampled_from(["[", "{\"a\":"]))
def test_depth_of_generated_nesting(depth, opener):
    closer = "]" if opener == "[" else "}"
    text = opener * depth + "0" + closer * depth
    assert text_depth(text) == depth
    assert text_depth(text, 10) == min(depth, 11)
    if depth > MAX_JSON_DEPTH:
        with pytest.raises(JsonDepthError):
            loads(text)
    else:
        assert jsonlimits.value_depth(loads(text)) == depth
