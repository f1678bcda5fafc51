"""Plugin discovery through real, installed distributions and their ``aiecs`` entry points.

The plugins below are built with their build backend and installed into a private
directory (see tests/support/plugin_dists.py); a child Python with that directory on its
path runs ``aiecs_core.load_plugins()`` exactly as a worker does.
"""

from __future__ import annotations

import pytest

from tests.support.plugin_dists import PluginDist, discover, install_dists, run_python

GOOD = PluginDist(
    "good",
    '''
    """A well-behaved plugin."""
    from pydantic import BaseModel, ConfigDict

    from aiecs_core import OperationContext, Service, Usage, hookimpl, operation


    class GreetInput(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str


    class Greeter(Service):
        """Greets people."""

        mode = "disc"
        name = "greeter"

        @operation(description="Greet, streaming the greeting")
        async def greet(self, ctx: OperationContext, data: GreetInput) -> dict:
            ctx.progress(0.5, "composing")
            ctx.stream("hello ")
            ctx.stream(data.name)
            ctx.record_usage(Usage(provider="greeter", model="g-1", input_tokens=1,
                                   output_tokens=2))
            return {"greeting": f"hello {data.name}"}

        @operation()
        def shout(self, ctx: OperationContext, data: GreetInput) -> str:
            return f"HELLO {data.name.upper()}"


    @hookimpl
    def register_services(register):
        register(Greeter)
    ''',
    version="1.2.3",
)

IMPORT_BROKEN = PluginDist(
    "importbroken",
    """
    import aiecs_sdk_that_is_not_installed  # noqa: F401

    from aiecs_core import hookimpl


    @hookimpl
    def register_services(register):
        raise AssertionError("never reached")
    """,
)

HOOK_BROKEN = PluginDist(
    "hookbroken",
    """
    from pydantic import BaseModel

    from aiecs_core import Service, hookimpl, operation


    class In(BaseModel):
        x: int


    class Half(Service):
        mode, name = "disc", "half"

        @operation()
        async def run(self, ctx, data: In) -> int:
            return data.x


    @hookimpl
    def register_services(register):
        register(Half)
        raise RuntimeError("hook exploded")
    """,
)


def _dup(letter: str) -> PluginDist:
    return PluginDist(
        "dup",
        f"""
        from pydantic import BaseModel

        from aiecs_core import Service, hookimpl, operation


        class In(BaseModel):
            x: int


        class Dup(Service):
            mode, name = "disc", "dup_{letter}"

            @operation()
            async def run(self, ctx, data: In) -> str:
                return "{letter}"


        @hookimpl
        def register_services(register):
            register(Dup)
        """,
        dist_name=f"aiecs-test-dup-{letter}",
    )


def _clash(name: str, own: str) -> PluginDist:
    """A plugin registering ``disc/clash`` (which the other clash plugin registers too)
    and ``disc/<own>`` (which only it registers)."""
    return PluginDist(
        name,
        f"""
        from pydantic import BaseModel

        from aiecs_core import Service, hookimpl, operation


        class In(BaseModel):
            x: int


        class Clash(Service):
            mode, name = "disc", "clash"

            @operation()
            async def run(self, ctx, data: In) -> str:
                return "{name}"


        class Own(Service):
            mode, name = "disc", "{own}"

            @operation()
            async def run(self, ctx, data: In) -> str:
                return "{own}"


        @hookimpl
        def register_services(register):
            register(Clash)
            register(Own)
        """,
    )


DIST_NAMES = {
    "good": "aiecs-test-good",
    "importbroken": "aiecs-test-importbroken",
    "hookbroken": "aiecs-test-hookbroken",
}
OURS = {"good", "importbroken", "hookbroken", "dup", "clasha", "clashb"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """All test plugins, built and installed once for this module."""
    return install_dists(
        tmp_path_factory.mktemp("plugin-dists"),
        [GOOD, IMPORT_BROKEN, HOOK_BROKEN, _dup("a"), _dup("b"), _clash("clasha", "own_a"),
         _clash("clashb", "own_b")],
    )


def _plugins(listing) -> dict[str, dict]:
    return {p["name"]: p for p in listing["plugins"] if p["name"] in OURS}


def _failures(listing) -> dict[str, list[dict]]:
    failures: dict[str, list[dict]] = {}
    for f in listing["failures"]:
        failures.setdefault(f["name"], []).append(f)
    return failures


def test_installed_distributions_carry_entry_points(site):
    names = sorted(p.name for p in site.glob("*.dist-info"))
    assert names == [
        "aiecs_test_clasha-0.1.0.dist-info",
        "aiecs_test_clashb-0.1.0.dist-info",
        "aiecs_test_dup_a-0.1.0.dist-info",
        "aiecs_test_dup_b-0.1.0.dist-info",
        "aiecs_test_good-1.2.3.dist-info",
        "aiecs_test_hookbroken-0.1.0.dist-info",
        "aiecs_test_importbroken-0.1.0.dist-info",
    ]
    entry_points = (site / "aiecs_test_good-1.2.3.dist-info" / "entry_points.txt").read_text()
    assert "[aiecs]" in entry_points and "good = aiecs_test_good" in entry_points


def test_good_plugin_is_discovered_and_invocable(site):
    out = discover(
        site,
        allow="good",
        run=[
            ("disc", "greeter", "greet", {"name": "ada"}),
            ("disc", "greeter", "shout", {"name": "ada"}),
            ("disc", "greeter", "__init__", {}),
            ("disc", "greeter", "greet", {"nom": "ada"}),
        ],
    )
    listing = out["listing"]
    assert listing["plugins"] == [
        {"name": "good", "distribution": "aiecs-test-good", "version": "1.2.3",
         "services": ["disc/greeter"]}
    ]
    assert listing["failures"] == []
    (service,) = listing["services"]
    assert service["plugin"] == "good" and service["description"] == "Greets people."
    assert sorted(service["operations"]) == ["greet", "shout"]

    greet, shout, undeclared, invalid = out["runs"]
    assert greet["result"] == {"greeting": "hello ada"}
    assert [(e["type"], e["progress"], e["delta"]) for e in greet["events"]] == [
        ("progress", 0.5, None), ("stream", None, "hello "), ("stream", None, "ada"),
    ]
    assert greet["usage"] == [{"provider": "greeter", "model": "g-1", "input_tokens": 1,
                               "output_tokens": 2, "cached_tokens": 0,
                               "reasoning_tokens": 0, "cost": None, "estimated": False}]
    assert shout["result"] == "HELLO ADA"
    assert undeclared["error"] == "OperationNotFoundError"
    assert "available: greet, shout" in undeclared["message"]
    assert invalid["error"] == "InputValidationError" and "name: Field required" in (
        invalid["message"]
    )


def test_broken_plugins_are_isolated_and_reported(site):
    out = discover(
        site,
        allow="importbroken,good,hookbroken",
        run=[("disc", "greeter", "greet", {"name": "bob"}), ("disc", "half", "run", {"x": 1})],
    )
    listing = out["listing"]
    assert list(_plugins(listing)) == ["good"]
    failures = _failures(listing)
    assert set(failures) == {"importbroken", "hookbroken"}
    (imp,) = failures["importbroken"]
    assert imp["distribution"] == "aiecs-test-importbroken"
    assert imp["reason"].startswith(
        "import failed: ModuleNotFoundError: No module named 'aiecs_sdk_that_is_not_installed'"
    )
    assert "aiecs_test_importbroken/__init__.py:1)" in imp["reason"]
    (hook,) = failures["hookbroken"]
    assert hook["distribution"] == "aiecs-test-hookbroken"
    assert hook["reason"].startswith("RuntimeError: hook exploded (")
    # the good plugin still works; the broken one registered nothing, not even what it
    # registered before raising
    greet, half = out["runs"]
    assert greet["result"] == {"greeting": "hello bob"}
    assert half["error"] == "ServiceNotFoundError"
    assert "available: disc/greeter" in half["message"]
    assert [s["service"] for s in listing["services"]] == ["greeter"]


def test_everything_installed_loads_without_an_allow_list(site):
    # No AIECS_PLUGINS: every aiecs entry point on the path is tried (the workspace's own
    # plugins too, when installed); ours are loaded or reported, never fatal.
    out = discover(site, run=[("disc", "greeter", "greet", {"name": "cy"})])
    listing = out["listing"]
    plugins = _plugins(listing)
    failures = _failures(listing)
    assert "good" in plugins
    assert {"importbroken", "hookbroken"} <= set(failures)
    assert "dup" not in plugins and [f["name"] for f in failures["dup"]] == ["dup", "dup"]
    assert out["runs"][0]["result"] == {"greeting": "hello cy"}


def test_allow_list_restricts_and_reports_missing(site):
    out = discover(
        site,
        allow=" good , not-installed-anywhere ",
        run=[("disc", "dup_a", "run", {"x": 1})],
    )
    listing = out["listing"]
    assert [p["name"] for p in listing["plugins"]] == ["good"]
    # broken plugins outside the list are never imported, so they are not failures
    assert listing["failures"] == [
        {"name": "not-installed-anywhere", "distribution": None,
         "reason": "listed in AIECS_PLUGINS but not installed"}
    ]
    assert out["runs"][0]["error"] == "ServiceNotFoundError"


def test_allow_list_of_only_missing_names_loads_nothing(site):
    listing = discover(site, allow="ghost")["listing"]
    assert listing["plugins"] == [] and listing["services"] == []
    assert [f["name"] for f in listing["failures"]] == ["ghost"]


def test_duplicate_entry_point_names_load_neither(site):
    out = discover(
        site,
        allow="dup",
        run=[("disc", "dup_a", "run", {"x": 1}), ("disc", "dup_b", "run", {"x": 1})],
    )
    listing = out["listing"]
    assert listing["plugins"] == []
    reasons = {f["distribution"]: f["reason"] for f in listing["failures"]}
    assert reasons == {
        "aiecs-test-dup-a": "duplicate plugin name 'dup': also provided by aiecs-test-dup-b; "
                            "neither is loaded (uninstall one)",
        "aiecs-test-dup-b": "duplicate plugin name 'dup': also provided by aiecs-test-dup-a; "
                            "neither is loaded (uninstall one)",
    }
    assert [run["error"] for run in out["runs"]] == ["ServiceNotFoundError"] * 2


def test_duplicate_service_is_refused_for_both_installed_plugins(site):
    out = discover(
        site,
        allow="clasha,clashb",
        run=[("disc", "clash", "run", {"x": 1}), ("disc", "own_a", "run", {"x": 1}),
             ("disc", "own_b", "run", {"x": 1})],
    )
    listing = out["listing"]
    assert {p["name"]: p["services"] for p in listing["plugins"]} == {
        "clasha": ["disc/own_a"], "clashb": ["disc/own_b"]}
    assert {f["name"]: f["reason"] for f in listing["failures"]} == {
        "clasha": "service disc/clash is also registered by plugin 'clashb' "
                  "(aiecs-test-clashb): refused for both (uninstall one, or leave one out "
                  "with AIECS_PLUGINS)",
        "clashb": "service disc/clash is also registered by plugin 'clasha' "
                  "(aiecs-test-clasha): refused for both (uninstall one, or leave one out "
                  "with AIECS_PLUGINS)",
    }
    assert listing["conflicts"] == [{"service": "disc/clash", "plugins": ["clasha", "clashb"]}]
    clash, own_a, own_b = out["runs"]
    assert clash["error"] == "ServiceNotFoundError"
    assert "registered by more than one plugin" in clash["message"]
    assert (own_a["result"], own_b["result"]) == ("own_a", "own_b")
    # with one of them left out, the other serves it
    alone = discover(site, allow="clashb", run=[("disc", "clash", "run", {"x": 1})])
    assert alone["listing"]["failures"] == [] and alone["runs"][0]["result"] == "clashb"


def test_echo_entry_point_loads_without_pytest(tmp_path):
    # A worker image has no pytest; the reference provider must still load through its
    # entry point (echo = "aiecs_core.testing.echo").
    site = install_dists(
        tmp_path,
        [PluginDist("refecho", "from aiecs_core.testing.echo import register_services\n")],
    )
    proc = run_python(
        site,
        """
        import sys
        sys.modules["pytest"] = None  # importing pytest now fails
        import aiecs_core
        registry = aiecs_core.load_plugins()
        assert not registry.failures, registry.failures
        assert ("test", "echo") in registry.keys(), registry.keys()
        print("ok")
        """,
        env={"AIECS_PLUGINS": "refecho"},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"


# --- what the worker and `aiecs plugins` say about them -----------------------------------

ALLOW_MIXED = "good,importbroken,clasha,clashb"


def _aiecs_plugins(site, allow: str, *args: str):
    import subprocess
    import sys

    from tests.support.plugin_dists import child_env

    return subprocess.run([sys.executable, "-m", "aiecs_worker.cli", "plugins", *args],
                          env=child_env(site, {"AIECS_PLUGINS": allow, "COLUMNS": "250"}),
                          capture_output=True, text=True, timeout=120)


def test_aiecs_plugins_exits_1_on_failures_in_both_forms(site):
    import json

    as_json = _aiecs_plugins(site, ALLOW_MIXED, "--json")
    assert as_json.returncode == 1, as_json.stderr
    listing = json.loads(as_json.stdout)
    assert sorted(f["name"] for f in listing["failures"]) == ["clasha", "clashb", "importbroken"]
    assert listing["conflicts"] == [{"service": "disc/clash", "plugins": ["clasha", "clashb"]}]
    table = _aiecs_plugins(site, ALLOW_MIXED)
    assert table.returncode == 1, table.stderr
    assert "Failed plugins" in table.stdout
    assert "service disc/clash is also registered by plugin 'clashb'" in table.stdout
    assert "No module named 'aiecs_sdk_that_is_not_installed'" in table.stdout
    clean = _aiecs_plugins(site, "good", "--json")
    assert clean.returncode == 0, clean.stderr
    assert json.loads(clean.stdout)["failures"] == []


def test_worker_start_up_log_lists_what_loaded_and_what_failed(site, aiecs_redis, start_worker):
    import os
    import uuid

    from aiecs_worker import execute_task

    from tests.support.events import wait_terminal

    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    worker = start_worker(env={"PYTHONPATH": path, "AIECS_PLUGINS": ALLOW_MIXED})
    log = worker.log()
    expected = [
        "plugins: 3 loaded, 3 failed, 3 services",
        "plugin good (aiecs-test-good 1.2.3): disc/greeter: greet, shout",
        "plugin clasha (aiecs-test-clasha 0.1.0): disc/own_a: run",
        "plugin importbroken (aiecs-test-importbroken) FAILED: import failed: "
        "ModuleNotFoundError: No module named 'aiecs_sdk_that_is_not_installed'",
        "plugin clasha (aiecs-test-clasha) FAILED: service disc/clash is also registered by "
        "plugin 'clashb' (aiecs-test-clashb): refused for both",
        "plugin clashb (aiecs-test-clashb) FAILED: service disc/clash is also registered by "
        "plugin 'clasha' (aiecs-test-clasha): refused for both",
    ]
    for line in expected:
        assert line in log, f"{line!r} not in the worker's log:\n{log}"
        assert log.index(line) < log.index(" ready."), "reported after the worker took tasks"
    assert "ERROR" in next(x for x in log.splitlines() if "importbroken" in x)

    client = aiecs_redis.client()
    task_ids = {}
    for service in ("nowhere", "clash"):
        task_ids[service] = f"t{uuid.uuid4().hex[:10]}"
        execute_task.delay(task_name="run", user_id="alice", task_id=task_ids[service], step=1,
                           mode="disc", service=service, input_data={"x": 1}, context={})
    terminal, _ = wait_terminal(client, "alice", task_ids["nowhere"])
    assert terminal["status"] == "failed" and terminal["error"]["type"] == "ServiceNotFoundError"
    message = terminal["error"]["message"]
    assert "available: disc/greeter, disc/own_a, disc/own_b" in message
    assert "plugins that failed to load: importbroken (import failed: ModuleNotFoundError" in (
        message)
    terminal, _ = wait_terminal(client, "alice", task_ids["clash"])
    assert "registered by more than one plugin" in terminal["error"]["message"]
