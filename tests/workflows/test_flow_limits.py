"""References multiply sizes: a step holds at most AIECS_MAX_REFS_PER_STEP of them, its
input is size-checked again once they are resolved, and a step that cannot be released
ends FAILED (its dependents CANCELLED) instead of being retried forever."""

from __future__ import annotations

import pytest
from aiecs_worker.producer.flow import get_workflow, submit_workflow
from aiecs_worker.producer.groups import GroupError
from aiecs_worker.store.events import TaskKeys
from aiecs_worker.store.keys import PREFIX, flows_due_key
from aiecs_worker.store.records import state_redis

from tests.support.events import read_events
from tests.workflows.test_flow import ended, statuses
from tests.workflows.test_flow_recovery import _queued_kwargs

ECHO = {"mode": "test", "service": "echo", "task_name": "echo"}
RESULT = {"$ref": "steps.1.result"}


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_a_step_with_thousands_of_references_is_refused_naming_it(aiecs_redis):
    """The issue's request: 2,000 copies of one reference (52 KB, under the payload
    limit) would resolve to 2,000 copies of the result. Refused before anything is
    recorded."""
    client = aiecs_redis.client()
    before = client.info("memory")["used_memory"]
    with pytest.raises(GroupError) as refused:
        submit_workflow("mallory", [
            {**ECHO, "step": 1, "input_data": {"text": "x" * 1000}},
            {**ECHO, "step": 2, "depends_on": [1], "input_data": {"text": "y"},
             "context": {"copies": [RESULT] * 2000}},
        ], task_id="amp1")
    assert refused.value.message == (
        "step 2: input_data + context hold more than 100 $ref references "
        "(AIECS_MAX_REFS_PER_STEP)")
    assert refused.value.details.get("step") == 2
    assert get_workflow("mallory", "amp1") is None
    assert client.dbsize() == 0
    assert client.info("memory")["used_memory"] - before < 1_000_000


def test_a_step_too_large_once_resolved_fails_and_its_dependents_are_cancelled(
        aiecs_redis, worker):
    """100 references (allowed) to a 100 KB result: 10 MB once resolved, over the 1 MiB
    payload limit. The step ends FAILED saying so, at once; its dependent CANCELLED;
    neither Redis nor the worker holds the resolved input."""
    client = aiecs_redis.client()
    submit_workflow("mallory", [
        {**ECHO, "step": 1, "input_data": {"text": "a" * 100_000, "chunks": 2}},
        {**ECHO, "step": 2, "depends_on": [1], "input_data": {"text": "y"},
         "context": {"copies": [RESULT] * 100}},
        {**ECHO, "step": 3, "depends_on": [2], "input_data": {"text": "z"}},
        {**ECHO, "step": 4, "input_data": {"text": "independent"}},
    ], task_id="amp2")
    view = ended("mallory", "amp2", timeout=30)
    assert statuses(view) == {1: "completed", 2: "failed", 3: "cancelled", 4: "completed"}
    error = view["steps"][1]["error"]
    assert error["type"] == "PayloadTooLargeError"
    assert error["message"].startswith("step 2: input_data + context is ")
    assert error["message"].endswith(" bytes once its references are resolved, over the "
                                     "limit of 1048576 (AIECS_MAX_PAYLOAD_BYTES)")
    size = int(error["message"].split(" is ")[1].split()[0])
    assert 100 * 100_000 < size < 100 * 100_100
    assert view["steps"][2]["error"]["message"] == "dependency step 2 ended FAILED"
    events = read_events(client, "mallory", "amp2")
    assert [e["status"] for e in events if e["step"] == 2] == ["pending", "failed"]
    # nothing of the resolved 10 MB anywhere: not in the step's record, not queued
    assert client.hget(TaskKeys("mallory", "amp2").state(2), "request") is None
    assert 2 not in _queued_kwargs(client)
    assert client.info("memory")["used_memory"] < 20_000_000  # the whole (flushed) db


def test_the_resolved_input_is_not_built_in_the_worker(aiecs_redis, worker):
    """Ten workflows of 100 references each to a 100 KB result, 100 MB once resolved (the
    issue's worker went 226 -> 1,427 MB; before this change this one grew by 504 MB): the
    worker's memory stays flat."""
    client = aiecs_redis.client()
    pid = worker.proc.pid
    submit_workflow("mallory", [{**ECHO, "step": 1, "input_data": {"text": "warm"}}],
                    task_id="warm")
    ended("mallory", "warm")
    rss0, mem0 = _rss_kb(pid), client.info("memory")["used_memory"]
    for i in range(10):
        submit_workflow("mallory", [
            {**ECHO, "step": 1, "input_data": {"text": "b" * 100_000, "chunks": 1}},
            {**ECHO, "step": 2, "depends_on": [1], "input_data": {"text": "y"},
             "context": {"copies": [RESULT] * 100}},
        ], task_id=f"amp3-{i}")
    for i in range(10):
        assert statuses(ended("mallory", f"amp3-{i}", timeout=60)) == {
            1: "completed", 2: "failed"}
    grew_rss_mb = (_rss_kb(pid) - rss0) / 1024
    grew_redis_mb = (client.info("memory")["used_memory"] - mem0) / 1e6
    print(f"worker RSS +{grew_rss_mb:.1f} MB, Redis +{grew_redis_mb:.1f} MB")
    assert grew_rss_mb < 60
    assert grew_redis_mb < 50


def test_a_workflow_whose_submitter_died_before_releasing_it_is_swept(
        aiecs_redis, worker, monkeypatch):
    """The submitter records the workflow and dies before its first advance (played here
    by an advance that raises): its steps used to stay PENDING forever (it was in no due
    set); a sweeper releases them now."""
    import aiecs_worker.producer.flow as flow

    def died(client, key):
        raise ConnectionError("the submitting process died here")

    monkeypatch.setattr(flow, "advance", died)
    with pytest.raises(ConnectionError):
        submit_workflow("alice", [{**ECHO, "step": 1, "input_data": {"text": "one"}},
                                  {**ECHO, "step": 2, "depends_on": [1],
                                   "input_data": {"text": {"$ref": "steps.1.result.text"}}}],
                        task_id="orphan")
    monkeypatch.undo()
    assert state_redis().zscore(flows_due_key(PREFIX), "aiecs:flow:alice:orphan") is not None
    view = ended("alice", "orphan", timeout=60)  # the module worker sweeps every 10 s
    assert statuses(view) == {1: "completed", 2: "completed"}
    assert view["steps"][1]["result"] == {"text": "one", "chunks": 3}
