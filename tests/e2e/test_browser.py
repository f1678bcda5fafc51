"""Headless Chromium drives the page end to end against a real server and worker."""

from __future__ import annotations

import json
import os

from aiecs_worker.server.tokens import issue_token

from tests.e2e.nodeproc import run_node
from tests.server.helpers import uid
from tests.support.processes import ServerProcess


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
    assert cancelled["error"] is None  # cancelled is not shown as an error
    assert cancelled["message"].startswith("Cancelled")
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


def test_page_first_hour_checks(node, chromium, page_server, aiecs_redis, worker, output_dir):
    """The dev sign-in form only on a dev server; a refused token never reads as signed in;
    a cancelled task is not a red error; nothing scrolls sideways at 390 px. Each backed by
    a screenshot under test-output/e2e/test_page_first_hour_checks/."""
    prod = ServerProcess(redis_url=os.environ["REDIS_URL"]).start()  # not in dev mode
    try:
        user = uid("web")
        code, lines, err = run_node(node, "page_checks.mjs", {
            "dev_url": page_server.url + "/", "prod_url": prod.url + "/",
            "chromium": chromium, "screenshot_dir": str(output_dir), "user": user,
            "good_token": prod.token("alice"),
            "bad_token": issue_token("mallory", "another-signing-key-" + "y" * 40, 600),
        }, timeout=240)
    finally:
        prod.stop()
        prod.close()
    steps = {line["step"]: line for line in lines}
    assert code == 0 and "error" not in steps, json.dumps(lines, indent=1) + err
    assert steps["done"]["errors"] == [], steps["done"]["errors"]

    # 1. no dev sign-in form on a production server (the CSS must not override `hidden`)
    assert steps["prod_page"]["devForm"] == {"hidden": True, "rendered": False,
                                             "display": "none"}

    # 2. a refused token is never shown as signed in, and is forgotten
    refused = steps["refused_token"]
    assert not any("Signed in" in text for text in refused["seen"]), refused["seen"]
    assert refused["whoami"] == "Not signed in."
    assert refused["authError"].startswith("Token refused: ")
    assert refused["submitHidden"] is True and refused["storedToken"] is None
    accepted = steps["accepted_token"]
    assert accepted["whoami"] == "Signed in as alice."
    assert accepted["seen"][0] == "Checking the token..."
    assert accepted["submitHidden"] is False and accepted["authError"] == ""

    # 3. 390 px: no sideways scrolling at any stage; the full-page screenshot is 390 wide
    phone = steps["phone"]
    for stage, width in phone["widths"].items():
        assert width["scrollWidth"] <= width["clientWidth"] == 390, (stage, width)
    assert phone["png"]["width"] == 390, phone["png"]

    # 4. cancelled: the status says so, no error text, no red in its screenshot
    cards = steps["cards"]
    cancelled, failed = cards["cancelled"], cards["failed"]
    assert cancelled["status"] == cancelled["badge"] == "cancelled"
    assert cancelled["error"] is None and cancelled["visibleErrors"] == []
    assert cancelled["message"].startswith("Cancelled")
    assert cancelled["red"] == 0, cancelled
    assert failed["status"] == "failed" and failed["error"]  # the control: red is shown
    assert failed["red"] > 50, failed
    for name in ("prod-no-dev-form.png", "refused-token.png", "phone-390.png",
                 "cancelled-card.png", "failed-card.png"):
        assert (output_dir / name).stat().st_size > 1_000, name
