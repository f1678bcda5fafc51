"""The conformance suite: the echo provider passes it, and broken providers fail it."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from aiecs_core.testing import ServiceConformance, echo

ECHO_EXAMPLES = {
    ("test", "echo", "echo"): {"text": "hello conformance", "chunks": 3},
    ("test", "echo", "echo_sync"): {"text": "hello conformance", "chunks": 2},
    ("test", "echo", "echo_heavy"): {"text": "heavy"},
    ("test", "echo", "noop"): {},
}


class TestEchoConformance(ServiceConformance):
    @pytest.fixture
    def plugin(self):
        return echo

    @pytest.fixture
    def distribution(self):
        # echo's code is in aiecs-core; its entry point is declared by aiecs-testplugin
        try:
            importlib.metadata.distribution("aiecs-testplugin")
        except importlib.metadata.PackageNotFoundError:
            return None  # a core-only environment: nothing declares it
        return "aiecs-testplugin"

    @pytest.fixture
    def examples(self):
        return ECHO_EXAMPLES


# --- the suite must fail for broken providers ----------------------------------------------

BROKEN = textwrap.dedent(
    '''
    from typing import Any

    import pytest
    from pydantic import BaseModel, ConfigDict

    from aiecs_core import OperationContext, Service, Usage, hookimpl, operation
    from aiecs_core.testing import ServiceConformance, echo


    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")
        text: str


    class Lenient(BaseModel):  # accepts anything: invalid input is never rejected
        text: str = ""


    class NonJsonResult(Service):
        mode, name = "broken", "nonjson"

        @operation()
        async def run(self, ctx: OperationContext, data: Strict) -> Any:
            return {"when": object()}


    class AnonymousUsage(Service):
        mode, name = "broken", "usage"

        @operation()
        async def run(self, ctx: OperationContext, data: Strict) -> Any:
            ctx.record_usage(Usage(provider="", model="", input_tokens=1))
            return {"ok": True}


    class Raising(Service):
        mode, name = "broken", "raising"

        @operation()
        def run(self, ctx: OperationContext, data: Strict) -> Any:
            raise ZeroDivisionError("provider bug")


    class LenientInput(Service):
        mode, name = "broken", "lenient"

        @operation()
        async def run(self, ctx: OperationContext, data: Lenient) -> Any:
            return {}


    class TwoOps(Service):
        mode, name = "broken", "twoops"

        @operation()
        async def first(self, ctx: OperationContext, data: Strict) -> Any:
            return {}

        @operation()
        async def second(self, ctx: OperationContext, data: Strict) -> Any:
            return {}


    def plugin_of(*services):
        class Plugin:
            @hookimpl
            def register_services(self, register):
                for service in services:
                    register(service)

        return Plugin()


    class RaisingHook:
        @hookimpl
        def register_services(self, register):
            raise RuntimeError("cannot register")


    class NothingRegistered:
        @hookimpl
        def register_services(self, register):
            pass


    def case(plugin_obj, examples):
        class Case(ServiceConformance):
            @pytest.fixture
            def plugin(self):
                return plugin_obj

            @pytest.fixture
            def examples(self):
                return examples

            @pytest.fixture
            def distribution(self):
                return None  # defined in this file: no entry point to check

        return Case


    OK = {"text": "x"}
    TestControlEcho = case(echo, {("test", "echo", op): {"text": "a"} for op in
                                  ("echo", "echo_sync", "echo_heavy")}
                           | {("test", "echo", "noop"): {}})
    TestNonJsonResult = case(plugin_of(NonJsonResult), {("broken", "nonjson", "run"): OK})
    TestAnonymousUsage = case(plugin_of(AnonymousUsage), {("broken", "usage", "run"): OK})
    TestRaising = case(plugin_of(Raising), {("broken", "raising", "run"): OK})
    TestLenientInput = case(plugin_of(LenientInput), {("broken", "lenient", "run"): OK})
    TestMissingExample = case(plugin_of(TwoOps), {("broken", "twoops", "first"): OK})
    TestRaisingHook = case(RaisingHook(), {})
    TestNothingRegistered = case(NothingRegistered(), {})
    '''
)

SUITE = {
    "test_entry_point_resolves_to_the_plugin",
    "test_plugin_registers_services",
    "test_every_operation_has_an_example",
    "test_listing_is_json",
    "test_undeclared_names_are_not_operations",
    "test_examples_run",
    "test_invalid_input_is_rejected",
}

ENTRY_POINT_CHECK = "test_entry_point_resolves_to_the_plugin"

#: Which conformance checks each broken provider must fail (all others must pass).
EXPECTED_FAILURES = {
    "TestControlEcho": set(),
    "TestNonJsonResult": {"test_examples_run"},
    "TestAnonymousUsage": {"test_examples_run"},
    "TestRaising": {"test_examples_run"},
    "TestLenientInput": {"test_invalid_input_is_rejected"},
    "TestMissingExample": {"test_every_operation_has_an_example"},
    "TestRaisingHook": {"test_plugin_registers_services"},
    "TestNothingRegistered": {"test_plugin_registers_services"},
}


def _outcomes(report: Path) -> dict[str, dict[str, str]]:
    outcomes: dict[str, dict[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        cls = case.get("classname").rsplit(".", 1)[-1]
        if case.find("failure") is not None or case.find("error") is not None:
            node = case.find("failure") if case.find("failure") is not None else case.find("error")
            outcome = "failed: " + (node.get("message") or "")
        elif case.find("skipped") is not None:
            outcome = "skipped"
        else:
            outcome = "passed"
        outcomes.setdefault(cls, {})[case.get("name")] = outcome
    return outcomes


def test_conformance_suite_fails_broken_providers(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_broken_providers.py").write_text(BROKEN)
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(tmp_path / "pytest.ini"),
         "--rootdir", str(tmp_path), "-p", "no:cacheprovider", f"--junitxml={report}",
         "-q", str(tmp_path / "test_broken_providers.py")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr  # 1: some tests failed
    outcomes = _outcomes(report)
    assert set(outcomes) == set(EXPECTED_FAILURES), proc.stdout
    for cls, expected in EXPECTED_FAILURES.items():
        assert set(outcomes[cls]) == SUITE, (cls, outcomes[cls])
        failed = {name for name, outcome in outcomes[cls].items() if outcome.startswith("failed")}
        passed = {name for name, outcome in outcomes[cls].items() if outcome == "passed"}
        assert failed == expected, (cls, outcomes[cls])
        assert passed == SUITE - expected - {ENTRY_POINT_CHECK}, (cls, outcomes[cls])
        assert outcomes[cls][ENTRY_POINT_CHECK] == "skipped"

    reasons = {cls: outcomes[cls] for cls in outcomes}
    assert "not JSON serializable" in reasons["TestNonJsonResult"]["test_examples_run"]
    assert "ZeroDivisionError" in reasons["TestRaising"]["test_examples_run"]
    assert "twoops" in reasons["TestMissingExample"]["test_every_operation_has_an_example"]
    assert "cannot register" in reasons["TestRaisingHook"]["test_plugin_registers_services"]
    assert "registered no service" in reasons["TestNothingRegistered"][
        "test_plugin_registers_services"
    ]


# --- the entry point of the distribution must load the plugin under test ---------------------

_SERVICE = """
from pydantic import BaseModel, ConfigDict

from aiecs_core import OperationContext, Service, hookimpl, operation


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str


class Shout(Service):
    mode, name = "ep", "{name}"

    @operation()
    async def shout(self, ctx: OperationContext, data: In) -> str:
        return data.text.upper()


@hookimpl
def register_services(register):
    register(Shout)
"""

#: (entry-point name, what the entry point names, its group): right, wrong target, a typo
#: in the module path, and an entry point in another group (so none in "aiecs").
_EP_CASES = {
    "right": (None, "aiecs"),
    "wrong": ("aiecs_core.testing.echo", "aiecs"),
    "typo": ("aiecs_test_eptypo.plugn", "aiecs"),
    "elsewhere": (None, "aiecs_plugins"),
}

_EP_SUITE = """
import importlib

import pytest

from aiecs_core.testing import ServiceConformance


def case(name):
    class Case(ServiceConformance):
        @pytest.fixture
        def plugin(self):
            return importlib.import_module(f"aiecs_test_ep{name}")

        @pytest.fixture
        def examples(self):
            return {("ep", name, "shout"): {"text": "hi"}}

    return Case


TestRight = case("right")
TestWrong = case("wrong")
TestTypo = case("typo")
TestElsewhere = case("elsewhere")
"""


def test_conformance_suite_checks_the_entry_point(tmp_path):
    from tests.support.plugin_dists import PluginDist, child_env, install_dists

    site = install_dists(tmp_path / "dists", [
        PluginDist(f"ep{name}", _SERVICE.replace("{name}", name), target=target, group=group)
        for name, (target, group) in _EP_CASES.items()
    ])
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_entry_points.py").write_text(_EP_SUITE)
    report = tmp_path / "report.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(tmp_path / "pytest.ini"),
         "--rootdir", str(tmp_path), "-p", "no:cacheprovider", f"--junitxml={report}",
         "-q", str(tmp_path / "test_entry_points.py")],
        cwd=tmp_path, env=child_env(site), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    outcomes = _outcomes(report)
    checks = {cls: outcomes[cls].pop(ENTRY_POINT_CHECK) for cls in outcomes}
    assert checks["TestRight"] == "passed", proc.stdout
    assert checks["TestWrong"].startswith("failed"), checks
    assert "no 'aiecs' entry point of aiecs-test-epwrong loads the plugin under test" in (
        checks["TestWrong"])
    assert "epwrong = aiecs_core.testing.echo" in checks["TestWrong"]
    assert "does not load" in checks["TestTypo"] and "plugn" in checks["TestTypo"]
    assert "aiecs-test-epelsewhere declares no entry point in group 'aiecs'" in (
        checks["TestElsewhere"])
    # every other check passes for all four: only the packaging is wrong
    for cls, rest in outcomes.items():
        assert set(rest.values()) == {"passed"}, (cls, rest)
