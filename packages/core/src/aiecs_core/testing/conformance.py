"""The conformance suite every provider package runs in its own tests.

Subclass :class:`ServiceConformance` in a test module and provide two fixtures::

    import pytest
    from aiecs_core.testing import ServiceConformance
    import my_provider.plugin

    class TestMyProviderConformance(ServiceConformance):
        @pytest.fixture
        def plugin(self):
            return my_provider.plugin

        @pytest.fixture
        def examples(self, fake_server):   # point the provider at a local server here
            return {("chat", "myprovider", "chat"): {"messages": [...], "model": "m"}}

``examples`` maps ``(mode, service, operation)`` to one valid ``input_data``; every declared
operation needs one. Each example is run through the same resolve/validate/invoke path the
worker uses, and its result, events and usage are checked against the contract.

The suite also checks the packaging: the distribution that ships the plugin declares an
entry point in the ``aiecs`` group that loads exactly the plugin under test (a typo there
would leave the plugin undiscovered by every worker). The distribution is found from the
plugin's module; override the ``distribution`` fixture to name it (when the entry point
lives in another distribution than the code), or return ``None`` to skip the check.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ..errors import AiecsError, OperationNotFoundError
from ..hookspecs import ENTRY_POINT_GROUP
from ..models import TaskEvent, Usage
from ..registry import ServiceRegistry

_UNDECLARED = ["__init__", "__class__", "__dict__", "aclose", "describe", "operations", "mode"]


class ServiceConformance:
    """Contract checks for one provider plugin. Needs fixtures ``plugin`` and ``examples``."""

    @pytest.fixture
    def registry(self, plugin: Any) -> Iterator[ServiceRegistry]:
        """A registry holding only the plugin under test."""
        registry = ServiceRegistry()
        registry.register_plugin(plugin, "under-test")
        yield registry
        registry.drop_instances()

    @pytest.fixture
    def distribution(self, plugin: Any) -> str | None:
        """The distribution whose ``aiecs`` entry point must load ``plugin`` (default: the
        one that installed the plugin's top-level package; None skips the check)."""
        return distribution_of(plugin)

    def test_entry_point_resolves_to_the_plugin(self, plugin: Any,
                                                distribution: str | None) -> None:
        """The distribution's ``aiecs`` entry point loads exactly the plugin."""
        if distribution is None:
            pytest.skip("the plugin is not installed from a distribution: no entry point")
        try:
            dist = importlib.metadata.distribution(distribution)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"distribution {distribution!r} is not installed")
        eps = [ep for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
        assert eps, (
            f"{distribution} declares no entry point in group {ENTRY_POINT_GROUP!r}: add "
            f'[project.entry-points.{ENTRY_POINT_GROUP}] <name> = "{_module_of(plugin)}" to '
            "its pyproject.toml"
        )
        targets = {}
        for ep in eps:
            try:
                targets[f"{ep.name} = {ep.value}"] = ep.load()
            except Exception as exc:  # noqa: BLE001 - reported as the failure
                pytest.fail(f"entry point {ep.name} = {ep.value!r} does not load: {exc!r}")
        assert any(target is plugin for target in targets.values()), (
            f"no {ENTRY_POINT_GROUP!r} entry point of {distribution} loads the plugin under "
            f"test ({_module_of(plugin)}); it declares: {sorted(targets)}"
        )

    def test_plugin_registers_services(self, registry: ServiceRegistry) -> None:
        """The plugin loads and registers at least one service."""
        assert not registry.failures, registry.failures
        assert registry.keys(), "the plugin registered no service"

    def test_every_operation_has_an_example(self, registry: ServiceRegistry,
                                            examples: dict[tuple[str, str, str], Any]) -> None:
        """Every declared operation has an example in ``examples``."""
        declared = {
            (mode, service, op)
            for mode, service in registry.keys()
            for op in registry.service_class(mode, service).operations
        }
        missing = declared - set(examples)
        assert not missing, f"no example for operations {sorted(missing)}"

    def test_listing_is_json(self, registry: ServiceRegistry) -> None:
        """The registry's listing is JSON and names every operation."""
        listing = json.loads(json.dumps(registry.listing()))
        for entry in listing["services"]:
            assert entry["operations"], entry
            for op in entry["operations"].values():
                assert op["input_schema"]["type"] == "object"

    def test_undeclared_names_are_not_operations(self, registry: ServiceRegistry) -> None:
        """Methods that are not declared operations cannot be invoked."""
        for mode, service in registry.keys():
            for name in _UNDECLARED:
                with pytest.raises(OperationNotFoundError):
                    registry.operation(mode, service, name)

    def test_examples_run(self, registry: ServiceRegistry,
                          examples: dict[tuple[str, str, str], Any]) -> None:
        """Each example runs through the worker's path and honours the contract."""
        from . import run_operation

        for (mode, service, op), input_data in examples.items():
            result, ctx = run_operation(registry, mode, service, op, input_data)
            json.dumps(result)  # results must be JSON
            for event in ctx.events:
                assert isinstance(event, TaskEvent)
                TaskEvent.model_validate_json(event.model_dump_json())
                if event.type == "progress" and event.progress is not None:
                    assert 0.0 <= event.progress <= 1.0
            for usage in ctx.usage:
                assert isinstance(usage, Usage)
                assert usage.provider and usage.model
                assert usage.input_tokens >= 0 and usage.output_tokens >= 0

    def test_invalid_input_is_rejected(self, registry: ServiceRegistry) -> None:
        """Input that does not match an operation's model is refused before the call."""
        from ..service import validate_input

        for mode, service in registry.keys():
            for spec in registry.service_class(mode, service).operations.values():
                with pytest.raises(AiecsError) as info:
                    validate_input(spec, {"__not_a_field__": object()})
                assert spec.name in str(info.value)


def _module_of(plugin: Any) -> str:
    if inspect.ismodule(plugin):
        return plugin.__name__
    return getattr(plugin, "__module__", None) or type(plugin).__module__


def distribution_of(plugin: Any) -> str | None:
    """The installed distribution that provides the plugin's top-level package, if any."""
    top = _module_of(plugin).split(".")[0]
    names = importlib.metadata.packages_distributions().get(top, [])
    return names[0] if names else None
