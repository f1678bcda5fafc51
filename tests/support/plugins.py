"""A plugin object for registry tests: what a plugin module does, without a distribution."""

from __future__ import annotations

from aiecs_core import hookimpl


class ServicesPlugin:
    """Registers the given service classes through the ``register_services`` hook."""

    def __init__(self, *services):
        self.services = services

    @hookimpl
    def register_services(self, register):
        for service in self.services:
            register(service)
