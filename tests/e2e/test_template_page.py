"""Submitting by template from the page (issue 18, item 3) in headless Chromium, at 1280
and 390 px: a real server with a history database of its own and a real worker. The page
lists the templates, offers a template's labels and versions, builds the variables form
from the version's JSON Schema, shows the server's refusals (422) with the variable
marked, and its cards name the template@version that ran.
Screenshots: test-output/e2e/<test>/."""

from __future__ import annotations

import json
import os

import pytest

from tests.e2e.nodeproc import run_node
from tests.server.helpers import uid
from tests.support.processes import SECRET, ServerProcess

SCHEMA = {"type": "object", "required": ["who"], "properties": {
    "who": {"type": "string", "maxLength": 40, "description": "whom to greet"},
    "chunks": {"type": "integer", "minimum": 1, "maximum": 5, "default": 2},
    "style": {"enum": ["plain", "loud"], "default": "plain"}}}


def _version(name: str, text: str) -> dict:
    return {"name": name, "mode": "test", "service": "echo", "operation": "echo",
            "input": {"text": text, "chunks": "{{chunks}}"}, "variables_schema": SCHEMA,
            "description": "greets someone"}


@pytest.fixture(scope="module")
def template_server(tmp_path_factory):
    """A dev server on a history database of its own, with the template ``page-...``:
    version 1 (label production) and version 2."""
    from aiecs_worker.server.tokens import issue_token

    db = tmp_path_factory.mktemp("templates") / "history.db"
    server = ServerProcess(redis_url=os.environ["REDIS_URL"], env={
        "AIECS_DEV": "1", "AIECS_DATABASE_URL": f"sqlite:///{db}"}).start()
    try:
        ops = issue_token("ops", SECRET, 600, scopes=("operator",))
        name = uid("page-")
        for n, text in ((1, "v1 {{style}}: Hello, {{who}}!"), (2, "v2 {{style}}: Hi, {{who}}!")):
            status, out = server.http("POST", "/templates", _version(name, text), token=ops)
            assert status == 201 and out["template"]["version"] == n, out
        status, out = server.http("PUT", f"/templates/{name}/labels/production",
                                  {"version": 1, "expected_version": None}, token=ops)
        assert status == 200, out
        server.template = name
        yield server
    finally:
        server.stop()
        server.close()


@pytest.mark.parametrize("width", [1280, 390])
def test_submit_by_template(node, chromium, template_server, worker, output_dir, width):
    server, name = template_server, template_server.template
    code, lines, err = run_node(node, "template_page.mjs", {
        "url": server.url + "/", "chromium": chromium, "screenshot_dir": str(output_dir),
        "user": uid("web"), "width": width, "template": name}, timeout=180)
    steps = {line["step"]: line for line in lines}
    assert code == 0 and "error" not in steps, json.dumps(lines, indent=1) + err
    assert steps["done"]["errors"] == [], steps["done"]["errors"]

    form = steps["form"]
    assert form["operationFormHidden"] is True and name in form["templates"]
    assert [r["value"] for r in form["refs"]] == [
        "label:production", "version:2", "version:1"], form["refs"]
    assert form["refs"][0]["text"] == "label production (now v1)"
    assert form["ref"] == "label:production" and form["version"] == "1"
    assert form["description"] == "Runs test/echo echo (version 1): greets someone"
    fields = {f["name"]: f for f in form["fields"]}
    assert list(fields) == ["who", "chunks", "style"]
    assert (fields["who"]["tag"], fields["who"]["value"]) == ("input", "")
    assert "*" in fields["who"]["label"] and "whom to greet" in fields["who"]["label"]
    assert (fields["chunks"]["kind"], fields["chunks"]["value"]) == ("number", "2")
    assert (fields["style"]["tag"], fields["style"]["value"]) == ("select", '"plain"')

    missing = steps["missing"]
    assert missing["error"] == (f"Refused (422 TemplateVariablesError): template {name!r} "
                                "version 1: missing variable: who"), missing["error"]
    assert [f["name"] for f in missing["fields"] if f["invalid"]] == ["who"]
    over = steps["over_max"]
    assert over["error"].startswith(f"Refused (422 TemplateVariablesError): template {name!r} "
                                    "version 1: variable chunks: 9"), over["error"]
    assert "maximum of 5" in over["error"]
    assert [f["name"] for f in over["fields"] if f["invalid"]] == ["chunks"]
    assert over["cards"] == 0  # nothing was queued

    assert steps["submitted"]["v2"]["description"].startswith("Runs test/echo echo (version 2)")
    cards = {c["template"]: c for c in steps["submitted"]["cards"]}
    assert set(cards) == {f"{name}@1", f"{name}@2"}, cards
    for n, text in ((1, "v1 plain: Hello, Ada!"), (2, "v2 plain: Hi, Ada!")):
        card = cards[f"{name}@{n}"]
        assert card["status"] == "completed" and card["stream"] == text, card
        assert card["chip"] == f"template {name}@{n}" and card["chipShown"], card
        assert card["name"] == "test/echo echo", card
    assert steps["submitted"]["after"]["error"] == ""
    for stage, w in steps["done"]["widths"].items():  # nothing scrolls sideways
        assert w["scrollWidth"] <= w["clientWidth"] == width, (stage, w)
    for shot in ("template-form", "template-refused", "template-cards"):
        assert (output_dir / f"{width}-{shot}.png").stat().st_size > 1_000, shot
