"""The service registry: plugin registration in isolation, lookups, instances, listing."""

from __future__ import annotations

import json
import threading
import time
from importlib.metadata import EntryPoint

import pytest
from aiecs_core import (
    ALLOW_ENV,
    OperationContext,
    OperationNotFoundError,
    Service,
    ServiceNotFoundError,
    ServiceRegistry,
    hookimpl,
    load_plugins,
    operation,
    reset_registry,
)
from aiecs_core.testing import echo
from pydantic import BaseModel

from tests.support.plugins import ServicesPlugin as Plugin


class Text(BaseModel):
    text: str


class Upper(Service):
    """Upper-cases text."""

    mode = "chat"
    name = "upper"

    @operation(description="upper-case")
    async def upper(self, ctx: OperationContext, data: Text) -> str:
        return data.text.upper()


class Lower(Service):
    mode = "chat"
    name = "lower"

    @operation()
    def lower(self, ctx: OperationContext, data: Text) -> str:
        return data.text.lower()


class RaisingPlugin:
    @hookimpl
    def register_services(self, register):
        register(Upper)  # staged, then discarded: a failing plugin registers nothing
        raise RuntimeError("boom in the hook")


class UnknownHookPlugin:
    @hookimpl
    def register_services(self, register):
        register(Lower)

    @hookimpl
    def register_widgets(self, register):
        pass


class WrongArgumentPlugin:
    @hookimpl
    def register_services(self, registrar):
        registrar(Lower)


class NoArgumentPlugin:
    @hookimpl
    def register_services(self):  # fewer arguments than the spec: allowed
        self.called = True


@pytest.fixture
def registry():
    reg = ServiceRegistry()
    yield reg
    reg.drop_instances()


def _reasons(registry: ServiceRegistry) -> dict[str, str]:
    return {f.name: f.reason for f in registry.failures}


# --- registering --------------------------------------------------------------------------


def test_register_plugin_and_resolve(registry):
    info = registry.register_plugin(Plugin(Upper, Lower), "case", distribution="d", version="1")
    assert info is not None and info.services == [("chat", "upper"), ("chat", "lower")]
    assert (info.name, info.distribution, info.version) == ("case", "d", "1")
    assert registry.keys() == [("chat", "lower"), ("chat", "upper")]
    assert registry.service_class("chat", "upper") is Upper
    assert registry.operation("chat", "upper", "upper") is Upper.operations["upper"]
    assert registry.failures == []


def test_plugin_on_the_process_registry_is_unregistered_after(monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "nothing-installed-by-this-name")
    reset_registry()
    try:
        global_registry = load_plugins()
        global_registry.register_plugin(Plugin(Upper), "test-upper")
        assert global_registry.operation("chat", "upper", "upper").name == "upper"
        global_registry.instance("chat", "upper")
        global_registry.unregister_plugin("test-upper")
        assert global_registry.keys() == []
        assert global_registry.instances() == []
        assert not global_registry.pm.has_plugin("test-upper")
        # the same name can be registered again once unregistered
        assert global_registry.register_plugin(Plugin(Upper), "test-upper") is not None
        global_registry.unregister_plugin("test-upper")
    finally:
        reset_registry()


def test_a_raising_hook_is_isolated(registry):
    registry.register_plugin(Plugin(Lower), "good-before")
    assert registry.register_plugin(RaisingPlugin(), "broken") is None
    registry.register_plugin(Plugin(Upper), "good-after")
    reasons = _reasons(registry)
    assert list(reasons) == ["broken"]
    assert reasons["broken"].startswith("RuntimeError: boom in the hook (")
    assert "test_registry.py:" in reasons["broken"]  # where it happened, for the operator
    assert [p.name for p in registry.plugins] == ["good-before", "good-after"]
    assert registry.keys() == [("chat", "lower"), ("chat", "upper")]
    assert registry._owners[("chat", "upper")] == "good-after"
    assert not registry.pm.has_plugin("broken")


def test_a_hook_raising_system_exit_is_isolated(registry):
    class Exiting:
        @hookimpl
        def register_services(self, register):
            raise SystemExit(3)

    assert registry.register_plugin(Exiting(), "exits") is None
    assert _reasons(registry)["exits"].startswith("SystemExit: 3")
    assert registry.register_plugin(Plugin(Upper), "good") is not None


def test_unknown_hook_is_rejected(registry):
    assert registry.register_plugin(UnknownHookPlugin(), "unknown") is None
    assert _reasons(registry) == {"unknown": "implements unknown hooks: ['register_widgets']"}
    assert registry.keys() == [] and not registry.pm.has_plugin("unknown")
    # a later, valid plugin is not blamed for the leftover hook name
    assert registry.register_plugin(Plugin(Lower), "fine") is not None
    assert list(_reasons(registry)) == ["unknown"]


def test_hook_with_unknown_argument_is_rejected(registry):
    assert registry.register_plugin(WrongArgumentPlugin(), "wrongarg") is None
    reason = _reasons(registry)["wrongarg"]
    assert reason.startswith("PluginValidationError") and "registrar" in reason


def test_hook_with_fewer_arguments_is_accepted(registry):
    plugin = NoArgumentPlugin()
    info = registry.register_plugin(plugin, "noargs")
    assert info is not None and info.services == [] and plugin.called
    assert registry.failures == []


class NoOperations(Service):
    mode = "chat"
    name = "empty"


class NoMode(Service):
    name = "nomode"

    @operation()
    async def op(self, ctx: OperationContext, data: Text) -> None:
        return None


class IntName(Service):
    mode = "chat"
    name = 3  # type: ignore[assignment]

    @operation()
    async def op(self, ctx: OperationContext, data: Text) -> None:
        return None


@pytest.mark.parametrize(
    ("registered", "reason"),
    [
        (object, "PluginError: register() takes a Service subclass, got <class 'object'>"),
        (Upper(), "PluginError: register() takes a Service subclass, got <"),
        ("chat/upper", "PluginError: register() takes a Service subclass, got 'chat/upper'"),
        (NoOperations, "PluginError: NoOperations declares no operations"),
        (NoMode, "PluginError: NoMode must set a string 'mode'"),
        (IntName, "PluginError: IntName must set a string 'name'"),
    ],
)
def test_invalid_registrations_fail_the_whole_plugin(registry, registered, reason):
    assert registry.register_plugin(Plugin(Lower, registered), "bad") is None
    assert _reasons(registry)["bad"].startswith(reason)
    assert registry.keys() == []  # Lower was not registered either: all or nothing
    assert not registry.pm.has_plugin("bad")


class OtherUpper(Upper):
    pass


@pytest.mark.parametrize("order", [("first", "second"), ("second", "first")])
def test_duplicate_service_is_refused_for_both_plugins_in_any_order(registry, order):
    plugins = {"first": Plugin(Upper), "second": Plugin(OtherUpper, Lower)}
    dists = {"first": "dist-one", "second": "dist-two"}
    for name in order:
        assert registry.register_plugin(plugins[name], name, distribution=dists[name])
    assert _reasons(registry) == {
        "first": "service chat/upper is also registered by plugin 'second' (dist-two): "
        "refused for both (uninstall one, or leave one out with AIECS_PLUGINS)",
        "second": "service chat/upper is also registered by plugin 'first' (dist-one): "
        "refused for both (uninstall one, or leave one out with AIECS_PLUGINS)",
    }
    assert registry.keys() == [("chat", "lower")]  # the plugins' other services still work
    assert registry.conflicts() == {("chat", "upper"): ["first", "second"]}
    with pytest.raises(ServiceNotFoundError) as info:
        registry.instance("chat", "upper")
    assert str(info.value) == (
        "service chat/upper is registered by more than one plugin (plugin 'first' "
        "(dist-one), plugin 'second' (dist-two)) and was refused for all of them: uninstall "
        "one, or leave one out with AIECS_PLUGINS"
    )
    listing = json.loads(json.dumps(registry.listing()))
    assert listing["conflicts"] == [{"service": "chat/upper", "plugins": ["first", "second"]}]
    assert [f["name"] for f in listing["failures"]] == ["first", "second"]
    assert {p["name"]: p["services"] for p in listing["plugins"]} == {
        "first": [], "second": ["chat/lower"]}
    assert [s["service"] for s in listing["services"]] == ["lower"]


def test_unregistering_one_side_of_a_duplicate_serves_the_other(registry):
    registry.register_plugin(Plugin(Upper), "first")
    registry.register_plugin(Plugin(OtherUpper), "second")
    registry.unregister_plugin("second")
    assert registry.failures == []
    assert registry.service_class("chat", "upper") is Upper


def test_unknown_service_names_the_plugins_that_failed(registry):
    registry.register_plugin(Plugin(Lower), "case")
    registry.register_plugin(RaisingPlugin(), "broken", distribution="aiecs-broken")
    with pytest.raises(ServiceNotFoundError) as info:
        registry.service_class("chat", "upper")
    message = str(info.value)
    assert message.startswith("no service 'upper' in mode 'chat'; available: chat/lower; "
                              "plugins that failed to load: broken (RuntimeError: boom in the "
                              "hook (")


def test_report_lists_plugins_services_operations_and_failures(registry):
    import logging

    registry.register_plugin(Plugin(Upper, Lower), "case", distribution="aiecs-case",
                             version="1.0")
    registry.register_plugin(RaisingPlugin(), "broken", distribution="aiecs-broken")
    lines = registry.report()
    assert lines[:2] == [
        (logging.INFO, "plugins: 1 loaded, 1 failed, 2 services"),
        (logging.INFO, "plugin case (aiecs-case 1.0): chat/lower: lower; chat/upper: upper"),
    ]
    level, text = lines[2]
    assert level == logging.ERROR
    assert text.startswith("plugin broken (aiecs-broken) FAILED: RuntimeError: boom in the hook")


def test_duplicate_plugin_name_is_reported(registry):
    registry.register_plugin(Plugin(Upper), "same")
    assert registry.register_plugin(Plugin(Lower), "same", distribution="other-dist") is None
    failure = registry.failures[0]
    assert (failure.name, failure.distribution) == ("same", "other-dist")
    assert failure.reason == "duplicate plugin name 'same'; not loaded"
    assert registry.keys() == [("chat", "upper")]


# --- lookups ------------------------------------------------------------------------------


def test_unknown_service_lists_what_is_available(registry):
    registry.register_plugin(Plugin(Upper, Lower), "case")
    with pytest.raises(ServiceNotFoundError) as info:
        registry.service_class("chat", "nope")
    assert str(info.value) == (
        "no service 'nope' in mode 'chat'; available: chat/lower, chat/upper"
    )
    assert info.value.details == {"mode": "chat", "service": "nope"}
    with pytest.raises(ServiceNotFoundError, match="available: none"):
        ServiceRegistry().operation("chat", "upper", "upper")


def test_unknown_operation_lists_what_is_available(registry):
    registry.register_plugin(Plugin(Upper), "case")
    with pytest.raises(OperationNotFoundError) as info:
        registry.operation("chat", "upper", "lower")
    assert str(info.value) == "service chat/upper has no operation 'lower'; available: upper"


# --- instances ----------------------------------------------------------------------------


class Counted(Service):
    mode = "chat"
    name = "counted"
    created = 0
    lock = threading.Lock()

    def __init__(self):
        time.sleep(0.05)  # widen the window in which a racing caller could build a second one
        with Counted.lock:
            Counted.created += 1

    @operation()
    async def op(self, ctx: OperationContext, data: Text) -> None:
        return None


def test_instance_is_created_once_and_reused(registry):
    registry.register_plugin(Plugin(Upper), "case")
    first = registry.instance("chat", "upper")
    assert isinstance(first, Upper)
    assert registry.instance("chat", "upper") is first
    assert registry.instances() == [first]
    assert registry.drop_instances() == [first]
    second = registry.instance("chat", "upper")
    assert second is not first


def test_instance_is_thread_safe(registry):
    Counted.created = 0
    registry.register_plugin(Plugin(Counted), "counted")
    barrier = threading.Barrier(16)
    seen = []

    def get():
        barrier.wait()
        seen.append(registry.instance("chat", "counted"))

    threads = [threading.Thread(target=get) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counted.created == 1
    assert len(seen) == 16 and all(s is seen[0] for s in seen)


def test_instance_of_unknown_service(registry):
    with pytest.raises(ServiceNotFoundError):
        registry.instance("chat", "upper")


# --- listing ------------------------------------------------------------------------------


def test_listing_is_json(registry):
    registry.register_plugin(Plugin(Upper, Lower), "case", distribution="case-dist", version="2")
    registry.register_plugin(RaisingPlugin(), "broken", distribution="broken-dist")
    listing = registry.listing()
    assert json.loads(json.dumps(listing)) == listing
    assert listing["plugins"] == [
        {"name": "case", "distribution": "case-dist", "version": "2",
         "services": ["chat/upper", "chat/lower"]},
    ]
    assert [(f["name"], f["distribution"]) for f in listing["failures"]] == [
        ("broken", "broken-dist")
    ]
    services = {(s["mode"], s["service"]): s for s in listing["services"]}
    assert list(services) == [("chat", "lower"), ("chat", "upper")]
    upper = services[("chat", "upper")]
    assert upper["plugin"] == "case" and upper["description"] == "Upper-cases text."
    assert upper["operations"]["upper"]["description"] == "upper-case"
    assert upper["operations"]["upper"]["input_schema"]["required"] == ["text"]


# --- entry points (in-process; real installed distributions: test_plugin_discovery.py) -----


def _ep(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group="aiecs")


def test_entry_points_are_loaded_in_isolation(registry):
    registry.load_entry_points(
        allow=None,
        entry_points=[
            _ep("missing-module", "aiecs_no_such_module_for_tests"),
            _ep("missing-attr", "aiecs_core.testing.echo:no_such_attribute"),
            _ep("echo", "aiecs_core.testing.echo"),
        ],
    )
    assert [p.name for p in registry.plugins] == ["echo"]
    reasons = _reasons(registry)
    assert reasons["missing-module"].startswith(
        "import failed: ModuleNotFoundError: No module named 'aiecs_no_such_module_for_tests'"
    )
    assert reasons["missing-attr"].startswith("import failed: AttributeError")
    assert registry.keys() == [("test", "echo")]


def test_allow_list_restricts_and_reports_missing_names(registry):
    registry.load_entry_points(
        allow=" echo , ,absent ",
        entry_points=[
            _ep("echo", "aiecs_core.testing.echo"),
            _ep("skipped", "aiecs_no_such_module_for_tests"),  # not allowed: never imported
        ],
    )
    assert [p.name for p in registry.plugins] == ["echo"]
    assert _reasons(registry) == {"absent": "listed in AIECS_PLUGINS but not installed"}


def test_allow_list_from_the_environment(registry, monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "absent-b,absent-a")
    registry.load_entry_points(entry_points=[_ep("echo", "aiecs_core.testing.echo")])
    assert registry.plugins == []
    assert [f.name for f in registry.failures] == ["absent-a", "absent-b"]


def test_empty_allow_list_means_all(registry, monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, " , ")
    registry.load_entry_points(entry_points=[_ep("echo", "aiecs_core.testing.echo")])
    assert [p.name for p in registry.plugins] == ["echo"] and registry.failures == []


def test_duplicate_entry_point_names_load_neither(registry):
    registry.load_entry_points(
        entry_points=[
            _ep("echo", "aiecs_core.testing.echo"),
            _ep("echo", "aiecs_no_such_module_for_tests"),  # never imported
        ]
    )
    assert registry.plugins == [] and registry.keys() == []
    assert [f.reason for f in registry.failures] == [
        "duplicate plugin name 'echo': also provided by another distribution; neither is "
        "loaded (uninstall one)"
    ] * 2


def test_load_plugins_runs_once_until_reset(monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "absent")
    reset_registry()
    try:
        first = load_plugins()
        assert [f.name for f in first.failures] == ["absent"]
        assert load_plugins("something-else") is first  # already loaded: argument ignored
        reset_registry()
        second = load_plugins("other-absent")
        assert second is not first
        assert [f.name for f in second.failures] == ["other-absent"]
    finally:
        reset_registry()


def test_workspace_test_plugin_is_discovered_when_installed():
    pytest.importorskip("aiecs_testplugin", reason="aiecs-testplugin is not installed")
    reset_registry()
    try:
        registry = load_plugins("echo,testplugin")
        assert registry.failures == []
        # only mode "test": it is in every dev environment and must not take real names
        assert registry.keys() == [("test", "buggy"), ("test", "echo")]
        with pytest.raises(OperationNotFoundError):
            registry.operation("test", "echo", "__init__")
    finally:
        reset_registry()


def test_echo_module_is_a_plugin(registry):
    info = registry.register_plugin(echo, "echo")
    assert info is not None and info.services == [("test", "echo")]


class _TemplatesPlugin(Plugin):
    """Services, and templates through ``register_templates`` (or a hook that raises)."""

    def __init__(self, *services, templates=(), boom=False):
        super().__init__(*services)
        self._templates, self._boom = templates, boom

    @hookimpl
    def register_templates(self, register):
        if self._boom:
            raise RuntimeError("template hook broke")
        for t in self._templates:
            register(t)


def test_templates_are_collected_per_plugin_and_a_raising_hook_is_isolated():
    registry = ServiceRegistry()
    good = {"name": "shout", "mode": "chat", "service": "upper", "operation": "upper",
            "input": {"text": "{{text}}"}}
    registry.register_plugin(_TemplatesPlugin(Upper, templates=[good]), "good",
                             distribution="good-dist", version="1")
    registry.register_plugin(_TemplatesPlugin(Lower, boom=True), "bad")
    shipped, failures = registry.templates()
    assert [(info.name, info.distribution, t) for info, t in shipped] == [
        ("good", "good-dist", good)]
    assert [f.name for f in failures] == ["bad"]
    assert failures[0].reason.startswith("register_templates: RuntimeError: template hook "
                                         "broke")
