"""Property: any task arguments either validate into a TaskRequest or raise
InvalidTaskError (a PayloadTooLargeError for oversize ones): nothing else, ever."""

from __future__ import annotations

import pytest
from aiecs_core import InvalidTaskError, PayloadTooLargeError, TaskRequest
from aiecs_worker.store.requests import parse_request
from hypothesis import given
from hypothesis import strategies as st

from tests.support.props import json_values, props

FIELDS = ("task_name", "user_id", "task_id", "step", "mode", "service", "input_data",
          "context")
GOOD = dict(task_name="echo", user_id="alice", task_id="t1", step=1, mode="test",
            service="echo", input_data={"text": "hi"}, context={})


def deep(depth: int) -> dict:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return {"x": value}


field_values = json_values | st.builds(deep, st.integers(60, 3000))
arguments = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=10), field_values, max_size=10)


def check(args, kwargs, max_bytes=2000):
    try:
        req = parse_request(args, kwargs, max_bytes)
    except PayloadTooLargeError as exc:
        assert "AIECS_MAX_PAYLOAD_BYTES" in exc.message
        return None
    except InvalidTaskError as exc:
        assert exc.message
        return None
    assert isinstance(req, TaskRequest)
    return req


@props(150)
@given(arguments)
def test_random_keyword_arguments(kwargs):
    check((), kwargs)


@props(100)
@given(st.lists(field_values, max_size=10), arguments)
def test_random_positional_and_keyword_arguments(args, kwargs):
    check(tuple(args), kwargs)


@props(100)
@given(st.sampled_from(FIELDS), field_values)
def test_one_field_replaced_in_a_good_request(name, value):
    req = check((), {**GOOD, name: value})
    if req is not None:
        assert getattr(req, name) == value


@pytest.mark.parametrize("key", ["input_data", "context"])
def test_deep_arguments_refused_without_recursion(key):
    for depth in (64, 65, 5_000, 100_000):
        args = {**GOOD, key: deep(depth)}  # deep(n) nests n + 1 levels
        with pytest.raises(InvalidTaskError, match="nested deeper than 64 levels"):
            parse_request((), args, 10**9)
    assert parse_request((), {**GOOD, key: deep(63)}, 10**9)
