"""Headless Chromium drives the page end to end against a real server and worker."""

from __future__ import annotations

import json

from tests.e2e.nodeproc import run_node
from tests.server.serverproc import uid


def test_page_end_to_end(node, chromium, page_server, aiecs_redis, worker, output_dir):
    user = uid("web")
    code, lines, err = run_node(node, "browser.mjs", {
        "url": page_server.url + "/", "chromium": chromium,
        "screenshot_dir": str(output_dir), "user": user}, timeout=240)
    steps = {line["step"]: line for line in lines}
    assert code == 0 and "error" not in steps, json.dumps(lines, indent=1) + err

    assert steps["signed_in"]["whoami"] == f"Signed in as {user}."
    done = steps["completed"]
    assert done["progress"] == 1 and done["cancelDisabled"] is True
    assert done["stream"] == "Progress bars and streamed text, live in the browser."
    assert json.loads(done["result"]) == {
        "text": "Progress bars and streamed text, live in the browser.", "chunks": 6}

    cancelled = steps["cancelled"]
    assert cancelled["error"].startswith("TaskCancelledError")
    assert cancelled["cancelDisabled"] is True
    assert cancelled["message"] != "cancelling..."  # the terminal event's message stays

    caught = steps["caught_up"]
    assert caught["stream"] == caught["expected"]  # nothing lost to the network drop
    assert caught["lastSeq"] > caught["seen_offline"]
    # every event applied once: the page's last seq is the log's last seq
    status, view = page_server.http("GET", f"/tasks/{caught['task_id']}?events=1",
                                    token=page_server.token(user))
    assert status == 200 and view["last_seq"] == caught["lastSeq"]

    shot = steps["screenshot"]
    assert shot["errors"] == [], shot["errors"]
    assert (output_dir / "aiecs-page.png").stat().st_size > 10_000
    print(f"screenshot: {shot['file']}")
