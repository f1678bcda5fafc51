"""vertex/endpoint through a real ``celery -A aiecs_worker worker`` (threads pool, DEBUG
logging) against the local Vertex AI endpoints server: google-cloud-aiplatform imported
by the worker's warm-up, predictions COMPLETED, the runner retrying a 429 (Retry-After)
and a 500, an unknown endpoint FAILED with its reason (host and path named), an endpoint
that never answers reported while the task waits, and no credential in the log or in
Redis.

One worker for the whole scenario: importing google-cloud-aiplatform costs seconds of
CPU (about 13 s from source), once per process."""

from __future__ import annotations

import re
import uuid

import pytest

execute_task = pytest.importorskip("aiecs_worker").execute_task  # not in per-package runs

from tests.support.events import dump_redis, wait_terminal  # noqa: E402 - needs aiecs_worker
from tests.support.extras import installed  # noqa: E402
from tests.support.fake_openai import Hang  # noqa: E402
from tests.support.fake_vertex_endpoints import GoogleError  # noqa: E402

pytestmark = pytest.mark.skipif(
    not installed("google.cloud.aiplatform"),
    reason="the 'endpoints' extra (google-cloud-aiplatform) is not installed")

#: The worker imports aiplatform before its first task (at most 30 s, then the first
#: call does it): a loaded machine needs the margin.
TIMEOUT = 150.0


def submit(task_name: str, input_data: dict) -> str:
    task_id = f"t{uuid.uuid4().hex[:10]}"
    execute_task.delay(task_name=task_name, user_id="alice", task_id=task_id, step=1,
                       mode="vertex", service="endpoint", input_data=input_data, context={})
    return task_id


def test_endpoint_tasks_through_a_worker(aiecs_redis, start_worker, endpoints, tmp_path):
    worker = start_worker(env=endpoints.env(endpoints.write_credentials(tmp_path),
                                            AIECS_WAIT_NOTICE="0.5", VERTEX_TIMEOUT="3"),
                          loglevel="DEBUG")
    client = aiecs_redis.client()
    host = endpoints.api_endpoint.split("://", 1)[1]

    # predict: COMPLETED with the prediction
    task_id = submit("predict", {"instances": [{"text": "hi"}], "parameters": {"k": 1}})
    terminal, _ = wait_terminal(client, "alice", task_id, timeout=TIMEOUT)
    assert terminal["status"] == "completed", terminal
    assert terminal["result"]["predictions"] == [{"echo": {"text": "hi"},
                                                  "parameters": {"k": 1.0}}]
    assert terminal["result"]["deployed_model_id"] == "dm-111"

    # raw_predict: a 429 with Retry-After, then a 500, then the answer
    endpoints.requests.clear()
    endpoints.script(GoogleError(429, "quota", headers={"Retry-After": "1"}),
                     GoogleError(500, "transient"))
    task_id = submit("raw_predict", {"body": {"prompt": "hello"}})
    terminal, events = wait_terminal(client, "alice", task_id, timeout=TIMEOUT)
    assert terminal["status"] == "completed", terminal
    assert terminal["result"]["response"] == {"echo": {"prompt": "hello"}}
    arrivals = [r.at for r in endpoints.api_requests()]
    assert len(arrivals) == 3 and arrivals[1] - arrivals[0] >= 0.95  # never before Retry-After
    retries = [e["message"] for e in events
               if e["type"] == "progress" and "retrying" in (e["message"] or "")]
    assert len(retries) == 2
    assert "RateLimitError" in retries[0] and "ProviderServerError" in retries[1]

    # an endpoint that does not exist: FAILED at once, with the reason
    endpoints.requests.clear()
    task_id = submit("predict", {"endpoint": "999", "instances": [1]})
    terminal, _ = wait_terminal(client, "alice", task_id, timeout=TIMEOUT)
    assert terminal["status"] == "failed", terminal
    assert terminal["error"]["type"] == "ModelNotFoundError"
    assert "endpoints/999" in terminal["error"]["message"]
    assert (f"(at POST {host}/v1/projects/test-project/locations/us-central1/endpoints/"
            "999:predict, endpoint '999': ") in terminal["error"]["message"], terminal
    assert terminal["error"]["details"]["status_code"] == 404
    assert len(endpoints.api_requests()) == 1  # not retried

    # an endpoint that accepts the request and never answers (issue 21): the task is told
    # within AIECS_WAIT_NOTICE, naming provider, host and endpoint; the timeout is retried
    endpoints.script(Hang())
    task_id = submit("raw_predict", {"body": {"prompt": "slow"}})
    terminal, events = wait_terminal(client, "alice", task_id, timeout=TIMEOUT)
    assert terminal["status"] == "completed", terminal
    messages = [e["message"] or "" for e in events if e["type"] == "progress"]
    notices = [m for m in messages if "waiting for" in m]
    assert notices and re.fullmatch(
        rf"vertex-endpoint: waiting for {re.escape(host)} \(endpoint '1234567890'\): no "
        r"answer yet after 0\.[5-9] s \(the request gives up after 3 s\)", notices[0]), messages
    assert any("retrying" in m and "ProviderTimeoutError" in m for m in messages), messages

    # the credentials were used (a self-signed JWT by aiplatform, the OAuth token by
    # raw_predict), and are nowhere in the worker's DEBUG log nor in Redis
    assert endpoints.access_token in endpoints.bearer_tokens
    assert any(t.startswith("eyJ") for t in endpoints.bearer_tokens)
    log, stored = worker.log(), dump_redis(client)
    for token in endpoints.bearer_tokens:
        assert token not in log and token not in stored
        assert token[:40] not in log

    # aiplatform was imported by the warm-up thread (off the loop), which logs its time
    warmed = re.search(r"providers warmed: .*vertex/endpoint (\d+\.\d+)s", log)
    assert warmed, "vertex/endpoint was not warmed"
    print(f"vertex/endpoint warm-up: {warmed.group(1)} s")
