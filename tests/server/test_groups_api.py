"""Batches and workflows over HTTP, against a real server and a real Celery worker."""

from __future__ import annotations

import asyncio

from tests.server.helpers import Recorder, uid, wait_until


def echo(text: str, **extra) -> dict:
    return {"mode": "test", "service": "echo", "task_name": "echo",
            "input_data": {"text": text, **extra}}


def test_batch_over_http_with_replayable_events(progress_server, aiecs_redis, worker):
    server, alice, bob = progress_server, uid("alice"), uid("bob")
    token = server.token(alice)
    status, out = server.http("POST", "/batches", {"items": [
        echo("one"), echo("two", fail="server"), echo("three")]}, token=token)
    assert status == 202, out
    batch_id = out["batch_id"]
    assert out["total"] == 3 and [i["task_id"] for i in out["items"]] == [
        f"{batch_id}.0", f"{batch_id}.1", f"{batch_id}.2"]

    def finished():
        code, body = server.http("GET", f"/batches/{batch_id}", token=token)
        return body if code == 200 and body["finished"] else None

    view = wait_until(finished, timeout=60, message="the batch to finish")
    assert view["status"] == "failed" and view["partial_failure"]
    assert view["counts"]["completed"] == 2 and view["counts"]["failed"] == 1
    assert [p["task_id"] for p in view["problems"]] == [f"{batch_id}.1"]
    assert [i["result"] and i["result"]["text"] for i in view["items"]] == ["one", None, "three"]
    # another user sees nothing of it
    assert server.http("GET", f"/batches/{batch_id}", token=server.token(bob))[0] == 404
    assert server.http("DELETE", f"/batches/{batch_id}", token=server.token(bob))[0] == 404

    async def replay():  # the batch's events replay like a task's, to its owner
        rec = Recorder(server, token)
        await rec.connect()
        try:
            await rec.subscribe(batch_id)
            return rec.events(batch_id)
        finally:
            await rec.close()

    events = asyncio.run(replay())
    assert [e["seq"] for e in events] == [1, 2, 3, 4]
    assert events[-1]["status"] == "failed" and events[-1]["result"]["failed"] == 1


def test_bad_batch_and_workflow_are_refused_with_the_item_named(progress_server, aiecs_redis):
    server, token = progress_server, progress_server.token(uid("alice"))
    status, out = server.http("POST", "/batches", {"items": [echo("ok"), echo("x", chunks=0)]},
                              token=token)
    assert status == 422 and out["error"]["message"].startswith("item 1: ")
    status, out = server.http("POST", "/batches", {"items": [echo("ok")]})
    assert status == 401
    steps = [{"step": 1, "mode": "test", "service": "echo", "task_name": "echo",
              "input_data": {"text": "a"}, "depends_on": [2]},
             {"step": 2, "mode": "test", "service": "echo", "task_name": "echo",
              "input_data": {"text": "b"}, "depends_on": [1]}]
    status, out = server.http("POST", "/workflows", {"steps": steps}, token=token)
    assert status == 422 and "steps 1, 2 form a dependency cycle" in out["error"]["message"]
    steps[0]["depends_on"] = []
    steps[1]["service"] = "nope"
    status, out = server.http("POST", "/workflows", {"steps": steps}, token=token)
    assert status == 422 and out["error"]["message"].startswith("step 2: ServiceNotFound")
    assert aiecs_redis.client().keys("aiecs:flow:*") == []


def test_workflow_over_http(progress_server, aiecs_redis, worker):
    server, token = progress_server, progress_server.token(uid("alice"))
    steps = [{"step": 1, "mode": "test", "service": "echo", "operation": "echo",
              "input_data": {"text": "hello world"}},
             {"step": 2, "mode": "test", "service": "echo", "operation": "echo",
              "depends_on": [1], "input_data": {"text": {"$ref": "steps.1.result.text"}}}]
    status, out = server.http("POST", "/workflows", {"steps": steps, "task_id": "wf-http"},
                              token=token)
    assert status == 202 and out == {"task_id": "wf-http", "steps": [1, 2]}
    status, out = server.http("POST", "/workflows", {"steps": steps, "task_id": "wf-http"},
                              token=token)
    assert status == 409

    def ended():
        code, body = server.http("GET", "/workflows/wf-http", token=token)
        return body if code == 200 and body["status"] != "running" else None

    view = wait_until(ended, timeout=60, message="the workflow to end")
    assert view["status"] == "completed"
    assert [s["result"]["text"] for s in view["steps"]] == ["hello world", "hello world"]
    # its steps are ordinary executions of the task
    code, task = server.http("GET", "/tasks/wf-http", token=token)
    assert code == 200 and [s["status"] for s in task["steps"]] == ["completed", "completed"]
    assert server.http("GET", "/workflows/nope", token=token)[0] == 404
    code, body = server.http("DELETE", "/workflows/nope", token=token)
    assert (code, body["error"]["type"]) == (404, "not_found"), body  # NotFoundError
