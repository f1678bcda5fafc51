"""Provider inputs that name resources, refused at HTTP submission (issue 16, row 4 and the
model part of row 5): a Vertex resource name, a ``#``, a ``..`` as ``model``, a model
off the operator's allow-list (``AIECS_MODELS``) and a ``max_output_tokens`` above the
ceiling (``AIECS_MAX_OUTPUT_TOKENS``) get a 422 naming the problem on ``POST /tasks``,
``/batches``, ``/workflows`` and ``/schedules``, and nothing is queued or stored."""

from __future__ import annotations

import json
import os

import pytest

from tests.server.helpers import uid
from tests.support.processes import ServerProcess

USER = [{"role": "user", "content": "hello"}]
GOOD = "gemini-2.5-flash"


def chat(model: str, **extra) -> dict:
    return {"mode": "llm", "service": "vertex", "task_name": "chat",
            "input_data": {"model": model, "messages": USER, **extra}}


REFUSED = [
    (chat("projects/victim-project/locations/us-central1/endpoints/999"),
     "model: 'projects/victim-project/locations/us-central1/endpoints/999' is not a model "
     "id: contains '/'"),
    (chat("projects/p/locations/l/endpoints/123:undeployModel#"), "contains '#'"),
    (chat("../../endpoints/123"), "'..' path segment"),
    (chat(f"{GOOD}:undeployModel"), "':' is refused"),
    (chat("gemini-2.5-pro"),
     f"model: 'gemini-2.5-pro' is not allowed for provider 'vertex' (AIECS_MODELS); "
     f"allowed: {GOOD}"),
    (chat(GOOD, max_output_tokens=2049),
     "max_output_tokens: 2049 is above the ceiling of 2048 for provider 'vertex'"),
    ({**chat("gpt-4o-mini"), "service": "openai"},
     "'gpt-4o-mini' is not allowed for provider 'openai' (AIECS_MODELS); allowed: none"),
]


@pytest.fixture(scope="module")
def server():
    """A server of this module's own, with the operator's policy set, on the session's
    Redis (tests use unique user ids)."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("the session Redis is not running (is redis-server installed?)")
    server = ServerProcess(redis_url=url, env={
        "AIECS_MODELS": json.dumps({"vertex": [GOOD], "openai": []}),
        "AIECS_MAX_OUTPUT_TOKENS": json.dumps({"vertex": 2048, "*": 100_000}),
    }).start()
    yield server
    server.stop()
    server.close()


@pytest.mark.parametrize(("body", "named"), REFUSED, ids=[str(i) for i in range(len(REFUSED))])
def test_refused_at_every_submission_route(server, aiecs_redis, body, named):
    user = uid()
    token = server.token(user)
    status, out = server.http("POST", "/tasks", body, token=token)
    assert status == 422, out
    assert out["error"]["type"] == "InputValidationError" and named in out["error"]["message"]
    status, out = server.http("POST", "/batches", {"items": [chat(GOOD), body]}, token=token)
    assert status == 422 and out["error"]["message"].startswith("item 1: "), out
    assert named in out["error"]["message"]
    steps = [{"step": 1, **chat(GOOD)}, {"step": 2, **body}]
    status, out = server.http("POST", "/workflows", {"steps": steps}, token=token)
    assert status == 422 and out["error"]["message"].startswith("step 2: "), out
    assert named in out["error"]["message"]
    status, out = server.http("POST", "/schedules", {**body, "every": 60}, token=token)
    assert status == 422 and named in out["error"]["message"], out
    client = aiecs_redis.client()
    assert [k for k in client.scan_iter(f"*{user}*")] == []  # nothing queued or stored


def test_the_allowed_model_at_the_ceiling_is_accepted(server):
    status, out = server.http("POST", "/tasks", chat(GOOD, max_output_tokens=2048),
                              token=server.token(uid()))
    assert status == 202, out
