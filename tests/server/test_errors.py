"""The one error -> HTTP status map of the API (aiecs_worker.server.errors.as_api_error):
each error the producer raises gets its status and type there, and only there."""

from __future__ import annotations

import pytest
import redis
from aiecs_core import (
    InputValidationError,
    PayloadTooLargeError,
    QuotaExceededError,
    ServiceNotFoundError,
)
from aiecs_worker.producer.groups import GroupError, NotFoundError
from aiecs_worker.producer.schedules import ScheduleExistsError
from aiecs_worker.server.errors import NotFound, as_api_error


@pytest.mark.parametrize(("exc", "status", "type_"), [
    (NotFoundError("b1"), 404, "not_found"),
    (NotFound("no task 'x'"), 404, "not_found"),
    (ScheduleExistsError("task t already has a schedule"), 409, "conflict"),
    (GroupError("batch 'b' already exists", status=409), 409, "conflict"),
    (GroupError("too many items", status=413), 413, "payload_too_large"),
    (GroupError("item 3: unknown service"), 422, "invalid_request"),
    (PayloadTooLargeError("input_data too large"), 413, "payload_too_large"),
    (ServiceNotFoundError("no service x"), 422, "ServiceNotFoundError"),
    (InputValidationError("text: required"), 422, "InputValidationError"),
    (redis.exceptions.ConnectionError("refused"), 503, "unavailable"),
])
def test_each_error_has_its_status(exc, status, type_):
    mapped = as_api_error(exc)
    assert (mapped.status, mapped.type) == (status, type_)


def test_a_quota_is_429_with_retry_after_or_422_when_it_never_frees():
    later = as_api_error(QuotaExceededError("too fast", limit=5, setting="AIECS_X",
                                            retry_after=1.2))
    assert (later.status, later.headers, later.extra["retry_after"]) == (
        429, {"Retry-After": "2"}, 2)
    never = as_api_error(QuotaExceededError("too many steps", limit=5, setting="AIECS_Y"))
    assert (never.status, never.extra["setting"]) == (422, "AIECS_Y")


def test_an_outage_wrapped_by_celery_is_still_503():
    try:
        try:
            raise redis.exceptions.ConnectionError("refused")
        except redis.exceptions.ConnectionError as inner:
            raise RuntimeError("result consumer failed") from inner
    except RuntimeError as exc:
        assert as_api_error(exc).status == 503


def test_a_bare_key_error_is_a_bug_not_a_404():
    # it was a 404 before: any KeyError, a bug's included, read as "no such batch"
    assert as_api_error(KeyError("steps")) is None
    assert as_api_error(ValueError("x")) is None
