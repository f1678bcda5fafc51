"""Where the worker applies redaction: every event and terminal state it writes to Redis,
what it hands to Celery's result backend, the secrets it registers at start and its log
handlers. (End to end, through a real worker at DEBUG level: tests/providers/test_canary.py.)
"""

from __future__ import annotations

import json
import logging

import pytest
from aiecs_core import ErrorInfo, TaskEvent, TaskStatus
from aiecs_core.redaction import REDACTED, RedactingFilter, forget_secrets, registered_secrets

SECRET = "plain-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_secrets():
    forget_secrets()
    yield
    forget_secrets()


def event(**fields) -> TaskEvent:
    return TaskEvent(type="status", task_id="t1", step=1, user_id="alice", task_name="chat",
                     status=TaskStatus.FAILED, **fields)


def test_every_event_is_redacted_when_encoded_for_redis():
    from aiecs_core import register_secret
    from aiecs_worker.store.events import encode_event, script_args

    register_secret(SECRET)
    ev = event(message=f"failed {SECRET}", partial_output=f"text {SECRET}",
               result={"text": SECRET, "vectors": [[0.5, 1.0]]},
               error=ErrorInfo(type="X", message=SECRET, retryable=False,
                               details={"request_id": SECRET}))
    encoded = encode_event(ev)
    assert SECRET not in encoded and encoded.startswith("{")
    data = json.loads(encoded)
    assert data["message"] == f"failed {REDACTED}"
    assert data["partial_output"] == f"text {REDACTED}"
    assert data["result"] == {"text": REDACTED, "vectors": [[0.5, 1.0]]}
    assert data["error"]["details"]["request_id"] == REDACTED
    _, args = script_args(ev, "socketio", 100, 60)
    assert args[0] == encoded
    stream = event(message=None)
    assert json.loads(encode_event(stream)) == json.loads(
        stream.model_dump_json(exclude={"seq"}))


def test_the_terminal_state_fields_are_redacted():
    from aiecs_core import register_secret
    from aiecs_worker.store.events import finish_args

    register_secret(SECRET)
    finish = ["failed", json.dumps({"result": {"text": SECRET}}),
              json.dumps({"type": "X", "message": f"key {SECRET}"}), "[]", 1.5, 60]
    keys, args = finish_args(["seq", "log"], ["ev"], "state", finish)
    assert keys[:3] == ["state", "seq", "log"]
    assert SECRET not in json.dumps(args)
    assert json.loads(args[2]) == {"type": "X", "message": f"key {REDACTED}"}
    assert args[0] == "failed" and args[4:] == [1.5, 60, "ev"]


def test_an_error_for_the_result_backend_is_redacted_again():
    """A secret registered after the error was built is still caught on the way out."""
    from aiecs_core import ProviderError, register_secret
    from aiecs_worker.runner.tasks import _detached

    error = ProviderError(f"boom {SECRET}", request_id=SECRET)
    register_secret(SECRET)
    out = _detached(error)
    assert out.args == (f"boom {REDACTED}", {"request_id": REDACTED})


def test_install_registers_configured_secrets_and_filters_every_handler(monkeypatch):
    from aiecs_worker.ops.redaction import install

    monkeypatch.setenv("OPENAI_API_KEY", "openai-key-0123456789")
    monkeypatch.setenv("AIECS_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("REDIS_URL", "redis://:redis-password-1@localhost:6379/0")
    handler = logging.StreamHandler()
    logging.getLogger().addHandler(handler)
    try:
        install()
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    finally:
        logging.getLogger().removeHandler(handler)
    assert {"openai-key-0123456789", "s" * 40, "redis-password-1"} <= registered_secrets()
