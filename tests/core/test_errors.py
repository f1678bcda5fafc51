"""aiecs_core.errors: each class survives ``cls(*exc.args)``, pickle and Celery's JSON backend."""

from __future__ import annotations

import json
import pickle
import uuid

import pytest
from aiecs_core import errors
from aiecs_core.errors import (
    AiecsError,
    ConfigurationError,
    PayloadTooLargeError,
    ProviderError,
    RateLimitError,
    StreamInterruptedError,
    error_info,
)
from aiecs_core.models import ErrorInfo

ERROR_CLASSES = [
    getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)
]

#: Classes whose ``retryable`` is True; everything else is not retried by default.
RETRYABLE = {
    "RateLimitError",
    "ProviderServerError",
    "ProviderTimeoutError",
    "ProviderConnectionError",
    "QuotaExceededError",
}

#: Structured fields every error in a test carries (the properties read some of them).
FIELDS = {
    "provider": "openai",
    "status_code": 429,
    "retry_after": 1.5,
    "env_var": "OPENAI_API_KEY",
    "limit": 1024,
    "size": 4096,
    "partial_output": "Hello, wor",
    "operation": "chat",
    "nested": {"list": [1, "two", None], "flag": True},
}


def _properties(cls: type) -> list[str]:
    names = set()
    for klass in cls.__mro__:
        names.update(k for k, v in vars(klass).items() if isinstance(v, property))
    return sorted(names)


def _make(cls: type[AiecsError]) -> AiecsError:
    return cls(f"{cls.__name__} happened: résumé ✓", dict(FIELDS))


def _assert_same(a: BaseException, b: BaseException) -> None:
    assert type(a) is type(b)
    assert str(a) == str(b)
    assert a.args == b.args
    for name in _properties(type(a)):
        assert getattr(a, name) == getattr(b, name), name


def test_all_lists_every_error_class():
    defined = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, AiecsError)
    }
    assert defined == {cls.__name__ for cls in ERROR_CLASSES}
    assert len(ERROR_CLASSES) >= 20


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_round_trip_through_args(cls):
    exc = _make(cls)
    assert exc.args == (exc.message, FIELDS)
    again = cls(*exc.args)
    _assert_same(exc, again)
    assert again.details == FIELDS


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_round_trip_through_pickle(cls):
    exc = _make(cls)
    _assert_same(exc, pickle.loads(pickle.dumps(exc)))


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_round_trip_through_json_args(cls):
    # What any JSON transport does: args -> JSON array -> cls(*array).
    exc = _make(cls)
    _assert_same(exc, cls(*json.loads(json.dumps(exc.args))))


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_retryable_flags(cls):
    assert cls.retryable is (cls.__name__ in RETRYABLE)
    exc = cls("x")
    assert exc.is_retryable is cls.retryable
    assert exc.to_info().retryable is cls.retryable


def test_retryable_can_be_overridden_per_instance_and_survives_round_trip():
    exc = errors.ProviderServerError("stream already sent", retryable=False, provider="openai")
    assert not exc.is_retryable
    assert not type(exc)(*exc.args).is_retryable
    assert errors.InvalidRequestError("x", retryable=True).is_retryable


def test_keyword_fields_fill_details_and_none_is_dropped():
    exc = RateLimitError("slow down", {"provider": "xai"}, status_code=429, retry_after=None)
    assert exc.details == {"provider": "xai", "status_code": 429}
    assert exc.retry_after is None
    assert exc.args == ("slow down", {"provider": "xai", "status_code": 429})


def test_details_argument_is_copied():
    details = {"provider": "openai"}
    exc = ProviderError("x", details, status_code=500)
    details["provider"] = "changed"
    assert exc.provider == "openai" and "status_code" not in details


def test_no_arguments():
    exc = AiecsError()
    assert exc.message == "" and exc.details == {} and exc.args == ("", {})
    _assert_same(exc, AiecsError(*exc.args))


def test_properties_read_details():
    exc = _make(RateLimitError)
    assert (exc.provider, exc.status_code, exc.retry_after) == ("openai", 429, 1.5)
    assert RateLimitError("x", retry_after="2").retry_after == 2.0  # header text accepted
    assert ConfigurationError("missing", env_var="XAI_API_KEY").env_var == "XAI_API_KEY"
    too_big = PayloadTooLargeError("too big", limit=10, size=11)
    assert (too_big.limit, too_big.size) == (10, 11)
    assert isinstance(too_big, errors.InvalidTaskError)
    cut = StreamInterruptedError("cut", partial_output="Hel", provider="openai")
    assert cut.partial_output == "Hel" and not cut.is_retryable


def test_hierarchy():
    provider_branch = {
        "InvalidRequestError", "AuthenticationError", "ModelNotFoundError", "RateLimitError",
        "ProviderServerError", "ProviderTimeoutError", "ProviderConnectionError",
        "StreamInterruptedError",
    }
    for cls in ERROR_CLASSES:
        assert issubclass(cls, AiecsError)
        in_branch = cls.__name__ in provider_branch | {"ProviderError"}
        assert issubclass(cls, ProviderError) is in_branch


def test_str_and_repr():
    exc = errors.ModelNotFoundError("no such model", provider="openai", status_code=404)
    assert str(exc) == "no such model"
    assert repr(exc) == (
        "ModelNotFoundError('no such model', {'provider': 'openai', 'status_code': 404})"
    )


def test_to_info_and_error_info():
    exc = RateLimitError("slow down", provider="openai", retry_after=3)
    info = exc.to_info()
    assert info == ErrorInfo(
        type="RateLimitError", message="slow down", retryable=True,
        details={"provider": "openai", "retry_after": 3},
    )
    assert error_info(exc) == info
    assert error_info(ValueError("bad value")) == ErrorInfo(type="ValueError", message="bad value")
    assert error_info(KeyError()) == ErrorInfo(type="KeyError", message="KeyError")


def test_error_info_of_foreign_exception_has_no_traceback():
    try:
        raise RuntimeError("boom")
    except RuntimeError as exc:
        info = error_info(exc)
    dumped = info.model_dump_json()
    assert "Traceback" not in dumped and "test_errors.py" not in dumped
    assert info.details == {} and not info.retryable


# --- Celery's JSON result backend ---------------------------------------------------------


@pytest.fixture
def celery():
    """Celery and redis-py, or a skip (a run with only aiecs-core installed has neither)."""
    pytest.importorskip("redis")
    return pytest.importorskip("celery")


@pytest.fixture
def celery_app(celery, redis_server):  # celery first: skip before starting redis-server
    """A Celery app with a real Redis result backend and the JSON result serializer."""
    app = celery.Celery(
        "aiecs-errors-test",
        broker=redis_server.url,
        backend=redis_server.url,
        set_as_current=False,
    )
    app.conf.update(
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_serializer="json",
    )
    yield app
    app.backend.client.close()
    app.close()


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")  # celery
@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_round_trip_through_celery_json_result_backend(celery_app, redis_server, cls):
    backend = celery_app.backend
    assert backend.serializer == "json"
    exc = _make(cls)

    # The serialisation Celery applies to a failed task's exception.
    prepared = backend.prepare_exception(exc)
    assert prepared == {
        "exc_type": cls.__qualname__,
        "exc_module": "aiecs_core.errors",
        "exc_message": (exc.message, FIELDS),
    }
    _assert_same(exc, backend.exception_to_python(json.loads(json.dumps(prepared))))

    # The whole path: store the failure in Redis, read it back as a client would.
    task_id = str(uuid.uuid4())
    backend.mark_as_failure(task_id, exc)
    client = redis_server.client()
    try:
        stored = json.loads(client.get(f"celery-task-meta-{task_id}"))
    finally:
        client.close()
    assert stored["status"] == "FAILURE"
    assert stored["result"]["exc_type"] == cls.__qualname__
    assert stored["result"]["exc_message"] == [exc.message, FIELDS]

    result = celery_app.AsyncResult(task_id)
    assert result.state == "FAILURE"
    assert type(result.result) is cls
    _assert_same(exc, result.result)
    with pytest.raises(cls) as raised:
        result.get(propagate=True, timeout=10)
    _assert_same(exc, raised.value)
    assert raised.value.is_retryable is cls.retryable
