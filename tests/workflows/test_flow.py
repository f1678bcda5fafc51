"""Workflows (DAGs of steps of one task_id) on real Redis and real worker processes."""

from __future__ import annotations

import pytest
from aiecs_worker.producer.flow import cancel_workflow, get_workflow, submit_workflow
from aiecs_worker.producer.groups import GroupError

from tests.support.events import read_events, wait_until
from tests.workflows.test_batch import recorded


def step(n: int, deps=(), op: str = "echo", **inp) -> dict:
    inp.setdefault("text", f"step {n}")
    return {"step": n, "mode": "test", "service": "echo", "task_name": op,
            "input_data": inp, "depends_on": list(deps)}


def ended(user: str, task_id: str, timeout: float = 40.0) -> dict:
    return wait_until(lambda: (w := get_workflow(user, task_id)) and w["status"] != "running"
                      and w, timeout=timeout, message=f"workflow {task_id} to end")


def statuses(view: dict) -> dict[int, str]:
    return {s["step"]: s["status"] for s in view["steps"]}


def test_chain_passes_results_by_reference(aiecs_redis, worker):
    """extract -> summarise -> translate: each step's input takes the previous result."""
    submit_workflow("alice", [
        step(1, text="alpha beta"),
        step(2, [1], text={"$ref": "steps.1.result.text"},
             chunks={"$ref": "steps.1.result.chunks"}),
        step(3, [2], op="echo_heavy", text={"$ref": "steps.2.result.text"}),
    ], task_id="wf1")
    view = ended("alice", "wf1")
    assert view["status"] == "completed", view
    assert [s["result"]["text"] for s in view["steps"]] == ["alpha beta"] * 3
    assert view["steps"][1]["result"]["chunks"] == 4
    events = read_events(aiecs_redis.client(), "alice", "wf1")
    # step 2 ran only after step 1 completed, step 3 after step 2
    order = [(e["step"], e["status"]) for e in events if e["type"] == "status"
             and e["status"] in ("running", "completed")]
    assert order == [(1, "running"), (1, "completed"), (2, "running"), (2, "completed"),
                     (3, "running"), (3, "completed")]
    waiting = [e for e in events if e["status"] == "pending"]
    assert [e["message"] for e in waiting] == ["queued", "waiting for step 1",
                                               "waiting for step 2"]


def test_diamond_waits_for_every_dependency(aiecs_redis, worker):
    submit_workflow("alice", [
        step(1, text="a", chunks=2, delay=0.1),
        step(2, [1], text="b1 b2 b3 b4", chunks=4, delay=0.1),
        step(3, [1], text="c"),
        {**step(4, [2, 3], text={"$ref": "steps.2.result.text"},
                chunks={"$ref": "steps.2.result.chunks"}),
         "context": {"other": {"$ref": "steps.3.result.text"}}},
    ], task_id="wf2")
    view = ended("alice", "wf2")
    assert view["status"] == "completed"
    assert view["steps"][3]["result"] == {"text": "b1 b2 b3 b4", "chunks": 4}
    events = read_events(aiecs_redis.client(), "alice", "wf2")
    seq = {(e["step"], e["status"]): e["seq"] for e in events if e["type"] == "status"}
    assert seq[(4, "running")] > max(seq[(2, "completed")], seq[(3, "completed")])


def test_failed_dependency_cancels_dependents_and_other_branches_go_on(aiecs_redis, worker):
    submit_workflow("alice", [
        step(1, text="fails", fail="invalid"),
        step(2, [1]),                 # depends on the failure
        step(3, [2]),                 # transitively
        step(4, text="independent", delay=0.2),
        step(5, [4]),
    ], task_id="wf3")
    view = ended("alice", "wf3")
    assert view["status"] == "failed"
    assert statuses(view) == {1: "failed", 2: "cancelled", 3: "cancelled", 4: "completed",
                              5: "completed"}
    errors = {s["step"]: s["error"] for s in view["steps"]}
    assert errors[2]["message"] == "dependency step 1 ended FAILED"
    assert errors[2]["details"]["dependency"] == 1
    assert errors[3]["message"] == "dependency step 2 ended CANCELLED"
    events = read_events(aiecs_redis.client(), "alice", "wf3")
    for n in (2, 3):  # never ran, exactly one terminal event each
        mine = [e for e in events if e["step"] == n and e["type"] == "status"]
        assert [e["status"] for e in mine] == ["pending", "cancelled"]


def test_timed_out_dependency(aiecs_redis, worker):
    submit_workflow("alice", [step(1, chunks=10, delay=1.0), step(2, [1])], task_id="wf4")
    view = ended("alice", "wf4")
    assert statuses(view) == {1: "timed_out", 2: "cancelled"}
    assert view["steps"][1]["error"]["message"] == "dependency step 1 ended TIMED_OUT"


def test_cancel_running_and_waiting_steps(aiecs_redis, worker):
    submit_workflow("alice", [step(1, chunks=40, delay=0.5), step(2, [1]), step(3)],
                    task_id="wf5")
    wait_until(lambda: statuses(get_workflow("alice", "wf5")) in (
        {1: "running", 2: "pending", 3: "completed"},), timeout=30)
    assert cancel_workflow("alice", "wf5")[0] == 1  # step 2 may end first, by its dependency
    view = ended("alice", "wf5")
    assert statuses(view) == {1: "cancelled", 2: "cancelled", 3: "completed"}
    assert view["steps"][1]["error"]["message"] in ("cancelled before it started",
                                                    "dependency step 1 ended CANCELLED")


def test_unknown_ref_path_fails_the_step(aiecs_redis, worker):
    submit_workflow("alice", [step(1), step(2, [1], text={"$ref": "steps.1.result.nope"}),
                              step(3, [2])], task_id="wf6")
    view = ended("alice", "wf6")
    assert statuses(view) == {1: "completed", 2: "failed", 3: "cancelled"}
    assert "steps.1.result.nope" in view["steps"][1]["error"]["message"]


@pytest.mark.parametrize(("steps", "match"), [
    ([step(1, [2]), step(2, [3]), step(3, [1])], r"steps 1, 2, 3 form a dependency cycle"),
    ([step(1, [1])], r"step 1: depends on itself"),
    ([step(1, [9])], r"step 1: depends on step 9, which is not in the workflow"),
    ([step(1), step(1)], r"step 1: appears twice"),
    ([step(1), step(2, text={"$ref": "steps.1.result.text"})],
     r"step 2: input_data.text: .* refers to step 1, which is not among the steps it depends on"),
    ([step(1), step(2, [1], text={"$ref": "steps.x.result"})],
     r"step 2: input_data.text: \$ref 'steps.x.result' is not of the form"),
    ([step(1), {**step(2, [1]), "service": "nope"}], r"step 2: ServiceNotFoundError"),
    ([step(1), step(2, [1], op="nope")], r"step 2: OperationNotFoundError"),
    ([step(1), step(2, [1], chunks="many")], r"step 2: input_data does not match .*chunks"),
    ([step(1), {**step(2, [1]), "input_data": {"chunks": {"$ref": "steps.1.result.chunks"}}}],
     r"step 2: input_data does not match .*text"),
    ([], r"at least one step"),
    ([{"step": 1, "mode": "test"}], r"step 1: service: Field required"),
])
def test_refused_at_submission_before_anything_runs(aiecs_redis, steps, match):
    with pytest.raises(GroupError, match=match):
        submit_workflow("alice", steps, task_id="bad")
    assert recorded(aiecs_redis.client()) == []


def test_a_workflow_needs_a_new_task(aiecs_redis):
    submit_workflow("alice", [step(1)], task_id="wf7")
    with pytest.raises(GroupError, match="already exists"):
        submit_workflow("alice", [step(1)], task_id="wf7")
