"""Headless Chromium follows a workflow on the page: its card lists every step and its state."""

from __future__ import annotations

import json

from tests.e2e.nodeproc import run_node
from tests.server.helpers import uid


def _echo(step: int, input_data: dict, depends_on: list[int] | None = None) -> dict:
    return {"step": step, "mode": "test", "service": "echo", "task_name": "echo",
            "input_data": input_data, "depends_on": depends_on or []}


def test_page_lists_a_workflows_steps(node, chromium, page_server, aiecs_redis, worker,
                                      output_dir):
    """1 and 2 (taking 1's text by $ref) complete, 3 fails, 4 (waiting for 3) is cancelled
    naming its dependency; the followed card lists the four with these states."""
    user, task_id = uid("web"), uid("wf")
    status, out = page_server.http("POST", "/workflows", {"task_id": task_id, "steps": [
        _echo(1, {"text": "extracted text", "chunks": 2}),
        _echo(2, {"text": {"$ref": "steps.1.result.text"}, "chunks": 2}, [1]),
        _echo(3, {"text": "this step fails", "fail": "invalid"}),
        _echo(4, {"text": "never runs"}, [3]),
    ]}, token=page_server.token(user))
    assert status == 202 and out["task_id"] == task_id, out

    code, lines, err = run_node(node, "workflow_page.mjs", {
        "url": page_server.url + "/", "chromium": chromium, "screenshot_dir": str(output_dir),
        "user": user, "task_id": task_id, "steps": 4}, timeout=90)
    steps = {line["step"]: line for line in lines}
    assert code == 0 and "error" not in steps, json.dumps(lines, indent=1) + err
    assert steps["signed_in"]["whoami"] == f"Signed in as {user}."

    shown = steps["steps"]
    assert shown["listHidden"] is False and shown["listRendered"] is True, shown
    assert [(s["step"], s["status"]) for s in shown["steps"]] == [
        (1, "completed"), (2, "completed"), (3, "failed"), (4, "cancelled")], shown
    for s in shown["steps"]:
        assert s["rendered"] and s["text"].startswith(f"step {s['step']}: {s['status']}"), s
    assert "dependency step 3" in shown["steps"][3]["text"], shown["steps"][3]
    assert "FAILED" in shown["steps"][3]["text"], shown["steps"][3]

    done = steps["done"]
    assert done["errors"] == [], done["errors"]
    assert (output_dir / "workflow-steps.png").stat().st_size > 10_000
    print(f"screenshot: {done['file']}")
