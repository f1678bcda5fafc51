"""Services that exist only for aiecs's own tests.

``test/buggy`` has an operation that raises a plain exception, as a provider with a bug
would. Every service here is in mode ``test``: this distribution is installed in every
development environment, so it must not take a name a real plugin could serve (the
specification's example services are in ``examples/aiecs-example-spec``). Being installed
enables nothing: the registry serves mode ``test`` only with ``AIECS_TEST_SERVICES=1``.
"""

from __future__ import annotations

from typing import Any

from aiecs_core import OperationContext, Service, hookimpl, operation
from pydantic import BaseModel, ConfigDict


class BuggyInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: str = ""


class Buggy(Service):
    """A provider with a bug: its operation raises a plain exception whose text holds a
    credential, as a careless SDK wrapper might."""

    mode = "test"
    name = "buggy"

    @operation(description="Raise a KeyError that quotes a secret")
    async def explode(self, ctx: OperationContext, data: BuggyInput) -> dict[str, Any]:
        ctx.stream("partial ")
        raise KeyError(f"no route for api key {data.secret or 'sk-proj-CANARY0123456789'}")


@hookimpl
def register_services(register):
    register(Buggy)


#: A template shipped by this plugin (``register_templates``): published by the progress
#: server when it starts (tests/server/test_templates_api.py).
GREETING_TEMPLATE = {
    "name": "testplugin-greeting",
    "mode": "test", "service": "echo", "operation": "echo",
    "input": {"text": "Hello, {{who}}!", "chunks": "{{chunks}}"},
    "variables_schema": {"type": "object", "properties": {
        "who": {"type": "string", "maxLength": 100},
        "chunks": {"type": "integer", "minimum": 1, "maximum": 10, "default": 2}},
        "required": ["who"]},
    "description": "greets someone, in chunks",
}


@hookimpl
def register_templates(register):
    register(GREETING_TEMPLATE)
