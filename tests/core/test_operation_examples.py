"""Every operation's listed ``example`` is a valid first input (the page's form starts from
it): the installed providers' and the reference echo's, under the operator's model policy."""

from __future__ import annotations

import pytest
from aiecs_core import ModelPolicy, install_model_policy, load_plugins, validate_input
from aiecs_core.testing.echo import EchoService


@pytest.fixture
def no_policy():
    previous = install_model_policy(None)
    yield install_model_policy
    install_model_policy(previous)


def _examples():
    registry = load_plugins()
    services = [*(registry.service_class(s["mode"], s["service"])
                  for s in registry.listing()["services"]), EchoService]
    return [(svc, name) for svc in services for name in sorted(svc.operations)]


@pytest.mark.parametrize(("service", "name"), _examples(),
                         ids=lambda v: v if isinstance(v, str) else f"{v.mode}/{v.name}")
def test_listed_example_passes_its_operation(no_policy, service, name):
    described = service.describe()["operations"][name]
    example = described["example"]
    if example is None:  # no example given: the page builds one from the schema
        assert name not in service.examples
        return
    validate_input(service.operations[name], example)


def test_example_model_follows_the_model_policy(no_policy):
    svc = next(s for s, _ in _examples() if s.mode == "llm" and "chat" in s.examples)
    provider = svc.provider or svc.name
    assert svc.example_input("chat")["model"] == svc.examples["chat"]["model"]
    no_policy(ModelPolicy.build(models={provider: ["zz-allowed-2", "zz-allowed-1"]}))
    example = svc.example_input("chat")
    assert example["model"] == "zz-allowed-1"  # one the operator allows
    validate_input(svc.operations["chat"], example)
    assert svc.examples["chat"]["model"] != "zz-allowed-1"  # the class's own is untouched
