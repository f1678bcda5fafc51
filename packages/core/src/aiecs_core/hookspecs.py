"""Plugin hook specifications.

A provider plugin is a module (or object) with functions marked ``@hookimpl`` whose names
match the specs below, exposed through an entry point in the ``aiecs`` group::

    [project.entry-points.aiecs]
    myprovider = "my_package.plugin"

An implementation may accept fewer arguments than its spec: hooks can grow new arguments
without breaking existing plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - the service module needs pydantic; hooks do not
    from .service import Service

PROJECT_NAME = "aiecs"
#: Entry-point group plugins are discovered in (same string as the plugin manager's name).
ENTRY_POINT_GROUP = PROJECT_NAME

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_services(register: Callable[[type[Service]], None]) -> None:
    """Register the services this plugin provides.

    :param register: call ``register(ServiceClass)`` once per :class:`aiecs_core.Service`
        subclass. The service becomes reachable under ``(ServiceClass.mode,
        ServiceClass.name)``.
    """


@hookspec
def register_templates(register: Callable[[Mapping[str, Any]], None]) -> None:
    """Register the prompt templates this plugin ships.

    :param register: call ``register(template)`` once per template: a mapping with
        ``name`` and the content of its version (``mode``, ``service``, ``operation``,
        ``input`` with ``{{variables}}``, ``variables_schema``, ``defaults``,
        ``description``). The progress server publishes each one when it starts, as a
        new version of ``name`` unless identical content is already published (see
        docs/templates.md).
    """
