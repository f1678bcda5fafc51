"""aiecs_core.models: what crosses process boundaries, and how it is validated."""

from __future__ import annotations

import json
import re

import pytest
from aiecs_core import (
    ID_PATTERN,
    TERMINAL_STATUSES,
    ErrorInfo,
    TaskEvent,
    TaskRequest,
    TaskResult,
    TaskStatus,
    Usage,
)
from pydantic import ValidationError

VALID = {
    "task_name": "analyze_text",
    "user_id": "user-1",
    "task_id": "task.42",
    "step": 1,
    "mode": "chat",
    "service": "text_analyzer",
    "input_data": {"text": "hello"},
    "context": {"language": "en"},
}


def _errors(exc: ValidationError) -> dict[str, str]:
    """{field: error type} of a ValidationError."""
    return {".".join(map(str, e["loc"])): e["type"] for e in exc.errors()}


# --- TaskRequest ------------------------------------------------------------------------


def test_valid_request_keeps_its_fields_and_key():
    request = TaskRequest(**VALID)
    assert request.model_dump() == VALID
    assert request.key == "task.42:1"


def test_input_data_and_context_default_to_empty():
    fields = {k: v for k, v in VALID.items() if k not in ("input_data", "context")}
    request = TaskRequest(**fields)
    assert request.input_data == {} and request.context == {}


def test_request_is_frozen():
    request = TaskRequest(**VALID)
    with pytest.raises(ValidationError):
        request.step = 2  # type: ignore[misc]


@pytest.mark.parametrize("missing", ["task_name", "user_id", "task_id", "step", "mode", "service"])
def test_missing_field_is_named(missing):
    fields = {k: v for k, v in VALID.items() if k != missing}
    with pytest.raises(ValidationError) as info:
        TaskRequest(**fields)
    assert _errors(info.value) == {missing: "missing"}
    assert missing in str(info.value)


def test_extra_field_is_rejected_and_named():
    with pytest.raises(ValidationError) as info:
        TaskRequest(**VALID, priority=3)
    assert _errors(info.value) == {"priority": "extra_forbidden"}
    assert "priority" in str(info.value)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("step", "first", "int_parsing"),
        ("step", 1.5, "int_from_float"),
        ("step", None, "int_type"),
        ("step", -1, "greater_than_equal"),
        ("user_id", 42, "string_type"),
        ("task_id", ["t"], "string_type"),
        ("input_data", ["not", "a", "dict"], "dict_type"),
        ("context", "en", "dict_type"),
    ],
)
def test_wrong_typed_field_is_rejected(field, value, error):
    with pytest.raises(ValidationError) as info:
        TaskRequest(**{**VALID, field: value})
    assert _errors(info.value) == {field: error}


@pytest.mark.parametrize("value", [True, False])
def test_boolean_step_is_rejected_with_a_clear_message(value):
    # bool is an int subclass: without the check, True would silently become step 1.
    with pytest.raises(ValidationError) as info:
        TaskRequest(**{**VALID, "step": value})
    assert list(_errors(info.value)) == ["step"]
    assert "step must be an integer, not a boolean" in str(info.value)


def test_numeric_string_step_is_coerced():
    # Celery's JSON serializer delivers ints as ints; a form post may deliver "3".
    assert TaskRequest(**{**VALID, "step": "3"}).step == 3
    assert TaskRequest(**{**VALID, "step": 0}).step == 0


@pytest.mark.parametrize("field", ["user_id", "task_id", "mode", "service", "task_name"])
@pytest.mark.parametrize(
    "bad",
    ["", "a:b", "a/b", "../etc", "with space", "tab\t", "new\nline", "ü", "x" * 129, "-lead"],
)
def test_identifier_with_bad_characters_is_rejected(field, bad):
    # Identifiers end up in Redis keys (':' separated), room names and URLs ('/').
    with pytest.raises(ValidationError) as info:
        TaskRequest(**{**VALID, field: bad})
    assert _errors(info.value) == {field: "string_pattern_mismatch"}
    assert field in str(info.value)


@pytest.mark.parametrize("good", ["a", "A9", "user@example.com", "x-y_z.1", "x" * 128])
def test_identifiers_that_are_allowed(good):
    for field in ("user_id", "task_id", "mode", "service", "task_name"):
        assert getattr(TaskRequest(**{**VALID, field: good}), field) == good
    assert re.match(ID_PATTERN, good)


def test_request_json_round_trip():
    request = TaskRequest(**VALID)
    assert TaskRequest.model_validate_json(request.model_dump_json()) == request


# --- TaskStatus -----------------------------------------------------------------------------


def test_terminal_statuses():
    assert {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.TIMED_OUT,
        TaskStatus.CANCELLED,
    } == TERMINAL_STATUSES
    assert {s for s in TaskStatus if s.is_terminal} == TERMINAL_STATUSES
    assert not TaskStatus.PENDING.is_terminal
    assert not TaskStatus.RUNNING.is_terminal


def test_status_values_are_lower_case_strings():
    assert [s.value for s in TaskStatus] == [
        "pending", "running", "completed", "failed", "timed_out", "cancelled",
    ]
    assert TaskStatus("timed_out") is TaskStatus.TIMED_OUT
    assert json.dumps({"s": TaskStatus.FAILED}) == '{"s": "failed"}'


# --- TaskEvent / TaskResult ----------------------------------------------------------------


def _event(**fields) -> TaskEvent:
    base = {
        "type": "status",
        "task_id": "t1",
        "step": 2,
        "user_id": "u1",
        "task_name": "chat",
        "status": TaskStatus.FAILED,
    }
    return TaskEvent(**{**base, **fields})


def test_event_json_round_trip_with_every_field():
    event = _event(
        seq=7,
        progress=0.5,
        message="half way",
        delta="tok",
        result={"nested": [1, 2.5, "x", None, True]},
        error=ErrorInfo(
            type="RateLimitError", message="slow down", retryable=True,
            details={"retry_after": 2.0},
        ),
        usage=[Usage(provider="openai", model="gpt-4o-mini", input_tokens=3, output_tokens=4)],
        partial_output="partial",
    )
    text = event.model_dump_json()
    again = TaskEvent.model_validate_json(text)
    assert again == event
    assert isinstance(again.status, TaskStatus) and isinstance(again.error, ErrorInfo)
    decoded = json.loads(text)
    assert decoded["status"] == "failed" and decoded["error"]["details"] == {"retry_after": 2.0}


def test_event_defaults_and_timestamp():
    event = _event(type="progress", status=TaskStatus.RUNNING)
    assert event.seq == 0 and event.progress is None and event.usage == [] and event.error is None
    assert event.timestamp > 1_600_000_000


@pytest.mark.parametrize(
    ("fields", "terminal"),
    [
        ({"type": "status", "status": TaskStatus.COMPLETED}, True),
        ({"type": "status", "status": TaskStatus.CANCELLED}, True),
        ({"type": "status", "status": TaskStatus.RUNNING}, False),
        ({"type": "progress", "status": TaskStatus.COMPLETED}, False),
        ({"type": "stream", "status": TaskStatus.RUNNING}, False),
    ],
)
def test_event_terminal(fields, terminal):
    assert _event(**fields).terminal is terminal


@pytest.mark.parametrize("progress", [-0.01, 1.01, 2])
def test_event_progress_outside_unit_interval_is_rejected(progress):
    with pytest.raises(ValidationError) as info:
        _event(type="progress", progress=progress)
    assert "progress" in _errors(info.value)


def test_event_type_is_a_closed_set():
    with pytest.raises(ValidationError) as info:
        _event(type="debug")
    assert _errors(info.value) == {"type": "literal_error"}


def test_result_json_round_trip():
    result = TaskResult(
        task_id="t1", step=1, user_id="u1", task_name="analyze_text", mode="chat",
        service="text_analyzer", status=TaskStatus.COMPLETED, result={"sentiment": "positive"},
        usage=[Usage(provider="echo", model="echo-1", input_tokens=1, output_tokens=1, cost=0.5)],
        attempts=2, started_at=1.0, finished_at=2.5,
    )
    again = TaskResult.model_validate_json(result.model_dump_json())
    assert again == result
    assert json.loads(result.model_dump_json())["status"] == "completed"


# --- Usage ---------------------------------------------------------------------------------


def test_usage_addition_sums_tokens_and_keeps_the_left_identity():
    a = Usage(provider="openai", model="gpt-4o", input_tokens=10, output_tokens=5)
    b = Usage(provider="openai", model="gpt-4o", input_tokens=1, output_tokens=2)
    total = a + b
    assert total == Usage(provider="openai", model="gpt-4o", input_tokens=11, output_tokens=7)
    assert total.cost is None  # unknown + unknown stays unknown (never estimated)
    assert (a.input_tokens, b.input_tokens) == (10, 1)  # operands untouched


@pytest.mark.parametrize(
    ("left", "right", "cost"),
    [(None, None, None), (0.25, None, 0.25), (None, 0.5, 0.5), (0.25, 0.5, 0.75), (0.0, None, 0.0)],
)
def test_usage_addition_cost(left, right, cost):
    a = Usage(provider="p", model="m", cost=left)
    b = Usage(provider="p", model="m", cost=right)
    assert (a + b).cost == cost


def test_usage_sum_of_many():
    parts = [Usage(provider="p", model="m", input_tokens=i, output_tokens=2 * i) for i in range(5)]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    assert (total.input_tokens, total.output_tokens) == (10, 20)


def test_usage_rejects_unknown_fields():
    with pytest.raises(ValidationError) as info:
        Usage(provider="p", model="m", tokens=3)
    assert _errors(info.value) == {"tokens": "extra_forbidden"}


# --- identifiers: the whole string, never a prefix (issue 16, row 9) -------------------------


@pytest.mark.parametrize("field", ["user_id", "task_id", "mode", "service", "task_name"])
@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\n\n", " "])
def test_ids_with_a_trailing_newline_are_refused(field, suffix):
    """pydantic's ``pattern=`` (Rust regex) anchors ``$`` at the very end, unlike ``re``'s
    ``$`` which also matches before a final newline."""
    with pytest.raises(ValidationError) as info:
        TaskRequest.model_validate({**VALID, field: VALID[field] + suffix})
    assert _errors(info.value) == {field: "string_pattern_mismatch"}


def test_id_pattern_is_for_fullmatch():
    # why every check in the code uses re.fullmatch: re.match lets a trailing newline by
    assert re.match(ID_PATTERN, "alice\n") is not None
    assert re.fullmatch(ID_PATTERN, "alice\n") is None
    assert re.fullmatch(ID_PATTERN, "alice") is not None
