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


DIST_NAMES = {
    "good": "aiecs-test-good",
    "importbroken": "aiecs-test-importbroken",
    "hookbroken": "aiecs-test-hookbroken",
}
OURS = {"good", "importbroken", "hookbroken", "dup"}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """All test plugins, built and installed once for this module."""
    return install_dists(
        tmp_path_factory.mktemp("plugin-dists"),
        [GOOD, IMPORT_BROKEN, HOOK_BROKEN, _dup("a"), _dup("b")],
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
                               "output_tokens": 2, "cost": None}]
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
    assert "dup" in plugins and [f["name"] for f in failures["dup"]] == ["dup"]
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


def test_duplicate_entry_point_names_load_one_and_report_the_other(site):
    out = discover(
        site,
        allow="dup",
        run=[("disc", "dup_a", "run", {"x": 1}), ("disc", "dup_b", "run", {"x": 1})],
    )
    listing = out["listing"]
    (loaded,) = listing["plugins"]
    (failure,) = listing["failures"]
    assert loaded["name"] == failure["name"] == "dup"
    dists = {loaded["distribution"], failure["distribution"]}
    assert dists == {"aiecs-test-dup-a", "aiecs-test-dup-b"}
    assert failure["reason"] == (
        f"duplicate plugin name 'dup': already provided by {loaded['distribution']}; not loaded"
    )
    letter = loaded["distribution"][-1]
    assert loaded["services"] == [f"disc/dup_{letter}"]
    results = {run.get("result") for run in out["runs"]}
    errors = [run["error"] for run in out["runs"] if "error" in run]
    assert results == {letter, None} and errors == ["ServiceNotFoundError"]


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
