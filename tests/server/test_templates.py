"""Templates end to end, on SQLite and on a real PostgreSQL: a real ``aiecs serve`` and a
real Celery worker. Operators publish versions and move labels (CAS, 409); users submit
by label or version over HTTP, in batches, in workflows, as schedules, from Python and
from the CLI; the version is resolved once, at submission (a label moved while a task is
in flight changes nothing for it); bad variables are refused before anything is queued;
a plugin's templates are published when the server starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.server.helpers import uid, wait_until
from tests.support.processes import ServerProcess, WorkerProcess, report

GREET = {
    "mode": "test", "service": "echo", "operation": "echo",
    "input": {"text": "v1 {{who}}", "chunks": 2, "delay": "{{delay}}"},
    "variables_schema": {"type": "object", "properties": {
        "who": {"type": "string", "maxLength": 40},
        "delay": {"type": "number", "minimum": 0, "maximum": 5, "default": 0}},
        "required": ["who"]},
    "description": "greets",
}
#: whole-string variables keep their JSON type; chunks=0 passes the schema, not EchoInput
RAW = {"mode": "test", "service": "echo", "operation": "echo",
       "input": {"text": "{{text}}", "chunks": "{{chunks}}"},
       "variables_schema": {"type": "object", "properties": {
           "text": {"type": "string"}, "chunks": {"type": "integer", "default": 1}}}}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory):
    """The module's history database: a SQLite file, then a database of the session's
    PostgreSQL (each test taking it runs on both; template names are unique per test)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('history')}/history.db"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture(scope="module")
def module_stack(database):
    """A server and a worker on the session's Redis and the module's database."""
    env = {"AIECS_DATABASE_URL": database}
    server = ServerProcess(redis_url=os.environ["REDIS_URL"], env=env).start()
    worker = WorkerProcess(redis_url=os.environ["REDIS_URL"], env=env).start()
    yield server
    for proc in (worker, server):
        proc.stop()
        report(proc, 60)
        proc.close()


@pytest.fixture
def stack(module_stack, database, aiecs_redis, submitter_env):
    submitter_env(AIECS_DATABASE_URL=database)  # this process submits from Python too
    return module_stack


def _operator(server, user="ops"):
    from aiecs_worker.server.tokens import issue_token

    return issue_token(user, server.secret, 600, scopes=("operator",))


def _publish(server, token, name, content, status=201):
    code, out = server.http("POST", "/templates", {"name": name, **content}, token=token)
    assert code == status, out
    return out["template"]["version"]


def _result(server, token, task_id, step=None):
    def done():
        code, view = server.http("GET", f"/tasks/{task_id}" + (f"?step={step}" if step else ""),
                                 token=token)
        return view if code == 200 and view["status"] in (
            "completed", "failed", "cancelled", "timed_out") else None

    return wait_until(done, timeout=60, message=f"task {task_id} to finish")


def _refused(server, token, path, body, status=422):
    code, out = server.http("POST", path, body, token=token)
    assert code == status, out
    return out["error"]["message"]


def test_operators_publish_and_label_users_submit_by_label_once(stack):
    server, ops = stack, _operator(stack)
    greet = uid("greet")
    alice = server.token(uid("alice"))
    # the plugin's template was published at start-up, production set to it
    code, listing = server.http("GET", "/templates", token=alice)
    shipped = {t["name"]: t for t in listing["templates"]}["testplugin-greeting"]
    assert shipped["source"] == "aiecs-testplugin" and shipped["labels"] == {"production": 1}

    # writes need the operator scope; identical content is the same version
    assert server.http("POST", "/templates", {"name": greet, **GREET}, token=alice)[0] == 403
    assert _publish(server, ops, greet, GREET) == 1
    assert _publish(server, ops, greet, GREET, status=200) == 1
    assert _publish(server, ops, greet, {**GREET, "input": {
        **GREET["input"], "text": "v2 {{who}}"}}) == 2
    assert "not a valid JSON Schema" in _refused(
        server, ops, "/templates", {"name": "bad", **GREET, "variables_schema": {"type": 3}})

    # labels: compare-and-swap
    put = f"/templates/{greet}/labels/production"
    assert server.http("PUT", put, {"version": 1, "expected_version": None}, token=alice)[0] == 403
    assert server.http("PUT", put, {"version": 1, "expected_version": None}, token=ops)[0] == 200
    code, out = server.http("PUT", put, {"version": 2, "expected_version": None}, token=ops)
    assert code == 409 and out["error"]["current_version"] == 1, out

    # in flight: resolved at submission to version 1, then the label moves to 2
    slow = server.http("POST", "/tasks", {"template": {"name": greet, "label": "production"},
                                          "variables": {"who": "ann", "delay": 0.5}},
                       token=alice)
    assert slow[0] == 202 and slow[1]["template"] == {"name": greet, "version": 1}, slow
    held = server.http("POST", "/tasks", {"template": {"name": greet},  # production
                                          "variables": {"who": "bea"}, "countdown": 1.5},
                       token=alice)
    assert held[0] == 202, held
    assert server.http("PUT", put, {"version": 2, "expected_version": 1}, token=ops)[0] == 200
    view = _result(server, alice, slow[1]["task_id"])
    assert view["status"] == "completed" and view["result"]["text"] == "v1 ann"
    assert {e["template"]["version"] for e in view["events"]} == {1}  # every event says it
    assert _result(server, alice, held[1]["task_id"])["result"]["text"] == "v1 bea"
    # new submissions get version 2; version 1 stays runnable by number
    after = server.http("POST", "/tasks", {"template": {"name": greet, "label": "production"},
                                           "variables": {"who": "cy"}}, token=alice)[1]
    assert after["template"] == {"name": greet, "version": 2}, after  # the answer says it
    assert _result(server, alice, after["task_id"])["result"]["text"] == "v2 cy"
    old = server.http("POST", "/tasks", {"template": {"name": greet, "version": 1},
                                         "variables": {"who": "di"}}, token=alice)[1]
    assert _result(server, alice, old["task_id"])["result"]["text"] == "v1 di"

    code, hist = server.http("GET", f"/templates/{greet}/labels/production/history", token=alice)
    assert [(m["from_version"], m["to_version"], m["moved_by"]) for m in hist["moves"]] == [
        (1, 2, "ops"), (None, 1, "ops")]
    code, info = server.http("GET", f"/templates/{greet}", token=alice)
    assert info["labels"] == {"production": 2} and len(info["versions"]) == 2
    code, v1 = server.http("GET", f"/templates/{greet}/versions/1", token=alice)
    assert v1["input"]["text"] == "v1 {{who}}"
    assert server.http("GET", f"/templates/{greet}/versions/9", token=alice)[0] == 404


def test_bad_variables_are_refused_before_anything_is_queued(stack):
    server, ops = stack, _operator(stack)
    greet, raw = uid("greet"), uid("raw")
    alice = server.token(uid("alice"))
    _publish(server, ops, greet, GREET)
    _publish(server, ops, raw, RAW)
    ref = {"name": greet, "version": 1}
    cases = [
        ({"who": "x", "tone": "dry"}, "unknown variable tone"),
        ({}, "missing variable: who"),
        ({"who": "x" * 41}, "variable who: "),
    ]
    for variables, message in cases:
        body = {"template": ref, "variables": variables, "task_id": uid("t")}
        assert message in _refused(server, alice, "/tasks", body)
        assert server.http("GET", f"/tasks/{body['task_id']}", token=alice)[0] == 404
    # the rendered input goes through the operation's own check
    bad = {"template": {"name": raw, "version": 1}, "variables": {"text": "x", "chunks": 0},
           "task_id": uid("t")}
    assert "chunks" in _refused(server, alice, "/tasks", bad)
    assert server.http("GET", f"/tasks/{bad['task_id']}", token=alice)[0] == 404
    # a template says what to run: no mixing, no forged template reference
    assert "remove mode" in _refused(server, alice, "/tasks", {
        "template": ref, "variables": {"who": "x"}, "mode": "test"})
    assert "no template 'nope'" in _refused(server, alice, "/tasks", {
        "template": {"name": "nope"}, "variables": {}}, status=404)
    # batch, workflow, schedule: the same refusals, naming the item / step
    assert _refused(server, alice, "/batches", {"items": [
        {"template": ref, "variables": {"who": "ok"}},
        {"template": ref, "variables": {"who": 5}}]}).startswith("item 1: ")
    assert _refused(server, alice, "/workflows", {"steps": [
        {"step": 1, "template": ref, "variables": {"who": "ok"}},
        {"step": 2, "template": ref, "variables": {}, "depends_on": [1]}]}
    ).startswith("step 2: ")
    assert "unknown variable x" in _refused(server, alice, "/schedules", {
        "template": ref, "variables": {"who": "a", "x": 1}, "every": 60})
    code, out = server.http("GET", "/schedules", token=alice)
    assert out["schedules"] == []


def test_templates_in_a_batch_a_workflow_and_a_schedule(stack):
    server, ops = stack, _operator(stack)
    greet, raw = uid("greet"), uid("raw")
    alice = server.token(uid("alice"))
    _publish(server, ops, greet, GREET)
    _publish(server, ops, raw, RAW)
    server.http("PUT", f"/templates/{greet}/labels/production",
                {"version": 1, "expected_version": None}, token=ops)
    code, out = server.http("POST", "/batches", {"items": [
        {"template": {"name": greet}, "variables": {"who": w}} for w in ("a", "b", "c")]},
        token=alice)
    assert code == 202, out
    batch_id = out["batch_id"]

    def finished():
        c, body = server.http("GET", f"/batches/{batch_id}", token=alice)
        return body if c == 200 and body["finished"] else None

    view = wait_until(finished, timeout=60, message="the batch to finish")
    assert [i["result"]["text"] for i in view["items"]] == ["v1 a", "v1 b", "v1 c"]

    # a workflow: step 2's variable is step 1's result ($ref filling a whole string)
    code, out = server.http("POST", "/workflows", {"steps": [
        {"step": 1, "template": {"name": greet, "label": "production"},
         "variables": {"who": "flow"}},
        {"step": 2, "template": {"name": raw, "version": 1}, "depends_on": [1],
         "variables": {"text": {"$ref": "steps.1.result.text"}}}]}, token=alice)
    assert code == 202, out
    task_id = out["task_id"]
    step2 = _result(server, alice, task_id, step=2)
    assert step2["status"] == "completed" and step2["result"]["text"] == "v1 flow"
    events = server.http("GET", f"/tasks/{task_id}?events=100", token=alice)[1]["events"]
    assert {(e["step"], e["template"]["name"], e["template"]["version"])
            for e in events} == {(1, greet, 1), (2, raw, 1)}
    # a $ref only fills a whole string
    assert "only fill a whole string" in _refused(server, alice, "/workflows", {"steps": [
        {"step": 1, "template": {"name": raw, "version": 1}, "variables": {"text": "a"}},
        {"step": 2, "template": {"name": greet, "version": 1}, "depends_on": [1],
         "variables": {"who": {"$ref": "steps.1.result.text"}}}]})

    # a schedule keeps the version resolved when it was created
    code, out = server.http("POST", "/schedules", {
        "template": {"name": greet, "label": "production"}, "variables": {"who": "s"},
        "every": 3600}, token=alice)
    assert code == 201, out
    assert out["template"] == {"name": greet, "version": 1}
    assert out["input_data"]["text"] == "v1 s"


def test_python_and_cli_submissions(stack, tmp_path, database):
    from aiecs_history.errors import TemplateVariablesError
    from aiecs_worker import execute_task
    from aiecs_worker.producer import control

    server, greet = stack, uid("greet")
    # operators import YAML (versions and labels), export it back
    import yaml

    src = tmp_path / "greet.yaml"
    src.write_text(yaml.safe_dump({"templates": [{
        "name": greet, "labels": {"production": 2},
        "versions": [{"version": i, **GREET, "input": {**GREET["input"],
                                                      "text": f"v{i} {{{{who}}}}"}}
                     for i in (1, 2)]}]}))
    env = {**os.environ, "AIECS_SECRET_KEY": server.secret, "AIECS_DATABASE_URL": database}
    cli = [sys.executable, "-m", "aiecs_worker.cli"]

    def run(*args, code=0):
        out = subprocess.run([*cli, *args], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == code, out.stdout + out.stderr
        return out

    run("template", "import", str(src), "--server", server.url, "--user", "ops")
    run("template", "import", str(src), "--server", server.url, "--user", "ops")  # idempotent
    exported = run("template", "export", greet, "--server", server.url, "--user", "u").stdout
    doc = yaml.safe_load(exported)["templates"][0]
    assert doc["labels"] == {"production": 2} and [v["version"] for v in doc["versions"]] == [1, 2]
    listed = run("template", "list", "--server", server.url, "--user", "u").stdout
    assert f"{greet}  v2  test/echo.echo  labels: production=2" in listed
    moved = run("template", "label", greet, "staging", "1", "--server", server.url,
                "--user", "ops").stdout
    assert "staging -> version 1 (was -)" in moved
    run("template", "label", greet, "staging", "2", "--expected", "2", "--server",
        server.url, "--user", "ops", code=5)

    user = uid("carl")
    out = run("submit", "--template", f"{greet}:staging", "--var", "who=cli", "--watch",
              "--server", server.url, "--user", user)
    assert "v1 cli" in out.stdout + out.stderr
    bad = run("submit", "--template", f"{greet}@2", "--var", "who=1", "--var", "x=2",
              "--server", server.url, "--user", user, code=5)
    assert "unknown variable x" in bad.stderr

    # Python: the spec's .delay() with template + variables, resolved here
    res = execute_task.delay(user_id=user, task_id="py1", step=1,
                             template={"name": greet, "label": "production"},
                             variables={"who": "py"})
    assert res.get(timeout=60)["result"]["text"] == "v2 py"
    state = control.get_state(user, "py1", 1)["steps"][1]
    assert state["status"] == "completed"
    with pytest.raises(TemplateVariablesError, match="missing variable: who"):
        execute_task.delay(user_id=user, task_id="py2", step=1,
                           template={"name": greet, "version": 1}, variables={})
    assert control.get_state(user, "py2")["steps"] == {}


def test_history_database_down_templates_answer_503_the_rest_serves(aiecs_redis,
                                                                     start_server):
    """A server whose database does not answer starts (the plugins' templates are not
    published, a warning says why), answers 503 to what needs templates, and serves
    every other submission."""
    from tests.support.redis_server import free_port

    url = f"postgresql+psycopg://aiecs@127.0.0.1:{free_port()}/nowhere"
    server = start_server(aiecs_redis.url, env={"AIECS_DATABASE_URL": url})
    token = server.token(uid("eve"))
    code, out = server.http("POST", "/tasks", {"template": {"name": "greet"},
                                               "variables": {"who": "x"}}, token=token)
    assert code == 503 and "history database" in out["error"]["message"], out
    assert server.http("GET", "/templates", token=token)[0] == 503
    code, out = server.http("POST", "/tasks", {"mode": "test", "service": "echo",
                                               "task_name": "echo",
                                               "input_data": {"text": "x"}}, token=token)
    assert code == 202, out
    assert "plugin templates not published" in server.log()
