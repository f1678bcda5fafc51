"""What a new user tripped over on the page (issue 18), in headless Chromium at 1280 and
390 px against a real server and worker. Screenshots: test-output/e2e/<test>/."""

from __future__ import annotations

import json

import pytest

from tests.e2e.nodeproc import run_node
from tests.server.helpers import uid

STEP2_TEXT = "step two streams slowly, word by word, while the others have ended."


def _echo(step: int, input_data: dict, depends_on: list[int] | None = None) -> dict:
    return {"step": step, "mode": "test", "service": "echo", "task_name": "echo",
            "input_data": input_data, "depends_on": depends_on or []}


@pytest.mark.parametrize("width", [1280, 390])
def test_first_use(node, chromium, page_server, aiecs_redis, worker, output_dir, width):
    user = uid("web")
    workflow = {"task_id": uid("wf"), "steps": [
        _echo(1, {"text": "first", "chunks": 1}),
        _echo(2, {"text": STEP2_TEXT, "chunks": 16, "delay": 0.4}, [1]),
        _echo(3, {"text": "this step fails", "fail": "invalid"}),
        _echo(4, {"text": "never runs"}, [3]),
    ]}
    batch = {"batch_id": uid("batch"), "items": [
        {"mode": "test", "service": "echo", "task_name": "echo", "input_data": {"text": t}}
        for t in ("one", "two")]}
    slow_batch = {"batch_id": uid("slow"), "items": [
        {"mode": "test", "service": "echo", "task_name": "echo",
         "input_data": {"text": "slow item", "chunks": 40, "delay": 0.25}}] * 2}
    code, lines, err = run_node(node, "first_use.mjs", {
        "url": page_server.url + "/", "chromium": chromium, "screenshot_dir": str(output_dir),
        "user": user, "workflow": workflow, "batch": batch, "slow_batch": slow_batch,
        "unknown_id": uid("nobody"),
        "width": width}, timeout=180)
    steps = {line["step"]: line for line in lines}
    assert code == 0 and "error" not in steps, json.dumps(lines, indent=1) + err
    status, view = page_server.http("GET", f"/workflows/{workflow['task_id']}",
                                    token=page_server.token(user))
    assert status == 200 and view["status"] == "failed", view  # the API's word
    problems = _checks(steps, user, width, view, output_dir)
    assert not problems, "\n".join(problems)
    assert steps["done"]["errors"] == [], steps["done"]["errors"]


def _checks(steps: dict, user: str, width: int, workflow_view: dict, output_dir) -> list[str]:
    """Each fix's check, run on its own: what failed, one line per check (all of them
    fail on the page before issue 18)."""
    problems = []

    def check(name: str, test) -> None:
        line = steps.get(name)
        if line is None or "failed" in line:
            problems.append(f"{name}: the page did not get there: {line}")
            return
        try:
            test(line)
        except AssertionError as exc:
            problems.append(f"{name}: {exc} {json.dumps(line)[:1500]}")


    def signed_in(x):  # the sign-in panel is gone; the user's name and a way out shown
        assert x["authRendered"] is False and x["signOutRendered"] is True
        assert x["user"] == user
    check('signed_in', signed_in)

    def default_form(x):  # the first service listed (llm/openai chat), accepted as it is
        assert (x["service"], x["operation"]) == ("llm/openai", "chat")
        assert "task_id" in x and "error" not in x
        assert x["input"]["messages"] and x["input"]["messages"][0]["content"]
        assert x["input"]["model"] == "gpt-4o-mini"
    check('default_form', default_form)

    def workflow_running(x):  # step 2 runs after 3 (failed) and 4 (cancelled) ended
        assert x["status"] == x["badge"] == "running"
        assert x["cancelDisabled"] is False
        assert (x["streamLabel"] or "").startswith("step 2")
        assert x["stream"] and STEP2_TEXT.startswith(x["stream"])
        assert x["steps"] == [[1, "completed"], [2, "running"], [3, "failed"],
                              [4, "cancelled"]]
    check('workflow_running', workflow_running)

    def workflow_ended(x):  # ends as GET /workflows/{id} says
        assert x["status"] == workflow_view["status"] and x["cancelDisabled"] is True
        assert x["stream"] == STEP2_TEXT
    check('workflow_ended', workflow_ended)

    def failed(x):  # its title names the service; its error is printed once
        assert x["title"].startswith("test/echo echo")
        assert x["text"].count("echo was told to fail with invalid") == 1
        assert x["error"] == "InvalidRequestError: echo was told to fail with invalid"
    check('failed', failed)

    def batch(x):  # items counted, never "step 0"
        assert "step 0" not in x["text"]
        assert x["title"] == "batch · 2 of 2 items ended"
        assert x["status"] == "completed" and x["kind"] == "batch"
    check('batch', batch)

    def batch_cancel(x):  # DELETE /batches/{id}, not /tasks/{id} (404: "Cancel refused")
        assert not x["answered"].startswith("Cancel refused")
        assert x["status"] == x["badge"] == "cancelled" and x["cancelDisabled"] is True
        assert x["message"].startswith("partial failure: 0 of 2 items completed")

    check("batch_cancel", batch_cancel)

    def unknown(x):  # never PENDING with a live Cancel
        assert x["atOnce"]["status"] != "pending" and x["atOnce"]["cancelDisabled"]
        assert x["status"] == "unknown" and x["badge"] == "not found"
        assert x["cancelDisabled"] is True and x["message"].startswith("Not found")
    check('unknown', unknown)

    def signed_out(x):  # back to the sign-in panel, nothing of the user left
        assert x["authRendered"] is True and x["chipHidden"] is True
        assert x["whoami"] == "Not signed in." and x["cards"] == 0 and x["token"] is None
    check('signed_out', signed_out)

    def done(x):  # nothing scrolls sideways; every stage has its screenshot
        for stage, w in x["widths"].items():
            assert w["scrollWidth"] <= w["clientWidth"] == width, (stage, w)
        for name in ("signed-in", "workflow-running", "failed-card", "tasks", "signed-out"):
            assert (output_dir / f"{width}-{name}.png").is_file(), name
    check('done', done)
    return problems
