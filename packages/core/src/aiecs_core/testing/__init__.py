"""Test support for aiecs and for provider plugins.

- :mod:`aiecs_core.testing.echo`: the reference (echo) provider.
- :class:`ServiceConformance`: a pytest test class every provider package runs.
- :func:`run_operation`: run one operation in-process and collect its events.

Only ``ServiceConformance`` needs pytest, and it is imported on first access: the echo
provider (``aiecs_core.testing.echo``) loads in a worker that has no pytest installed.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..models import TaskRequest
from ..registry import ServiceRegistry
from ..service import RecordingContext, Service, invoke_operation, validate_input
from .echo import EchoInput, EchoService

if TYPE_CHECKING:
    from .conformance import ServiceConformance

__all__ = ["EchoInput", "EchoService", "ServiceConformance", "make_request", "run_operation"]


def __getattr__(name: str) -> Any:
    if name == "ServiceConformance":  # imports pytest: only when asked for
        from .conformance import ServiceConformance

        return ServiceConformance
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_request(
    mode: str,
    service: str,
    task_name: str,
    input_data: dict[str, Any] | None = None,
    **fields: Any,
) -> TaskRequest:
    """A TaskRequest with test defaults for the identity fields."""
    values: dict[str, Any] = {
        "user_id": "test-user",
        "task_id": "test-task",
        "step": 1,
        "context": {},
    }
    values.update(fields)
    return TaskRequest(
        task_name=task_name, mode=mode, service=service, input_data=input_data or {}, **values
    )


def run_operation(
    target: ServiceRegistry | Service,
    mode: str,
    service: str,
    task_name: str,
    input_data: dict[str, Any] | None = None,
    *,
    timeout: float = 60.0,
    **fields: Any,
) -> tuple[Any, RecordingContext]:
    """Resolve and run one operation in a fresh event loop; return (result, context).

    ``target`` is a registry (the operation is resolved through it, exactly as the worker
    does) or a service instance. The context holds the events, usage and streamed text.
    """
    request = make_request(mode, service, task_name, input_data, **fields)
    if isinstance(target, ServiceRegistry):
        spec = target.operation(mode, service, task_name)
        instance = target.instance(mode, service)
    else:
        spec = type(target).operations[task_name]
        instance = target
    data = validate_input(spec, request.input_data)
    ctx = RecordingContext(request)

    async def main() -> Any:
        try:
            return await asyncio.wait_for(invoke_operation(instance, spec, ctx, data), timeout)
        finally:
            await instance.aclose()
            if isinstance(target, ServiceRegistry):
                target.drop_instances()

    return asyncio.run(main()), ctx
