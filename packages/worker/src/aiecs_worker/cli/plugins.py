"""``aiecs plugins``: the loaded, disabled and failed plugins, their services and
operations."""

from __future__ import annotations

import json
import sys

import click
from aiecs_core import load_plugins

__all__ = ["plugins"]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def plugins(as_json: bool) -> None:
    """List loaded, disabled and failed plugins, their services and operations.

    A plugin of test services only is disabled (not failed) without AIECS_TEST_SERVICES=1.

    Exits 1 when a plugin failed to load or a service was refused as a duplicate (in both
    forms, so a deployment check can rely on the exit status).
    """
    # deferred: rich would slow every `aiecs` command's start
    from rich.console import Console
    from rich.table import Table

    listing = load_plugins().listing()
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        sys.exit(1 if listing["failures"] else 0)
    console = Console(highlight=False)
    table = Table("plugin", "distribution", "version", "services", title="Plugins")
    for p in listing["plugins"]:
        table.add_row(p["name"], p["distribution"] or "", p["version"] or "",
                      ", ".join(p["services"]))
    console.print(table)
    services = Table("mode/service", "operation", "queue", "description", title="Services")
    for s in listing["services"]:
        for name, op in s["operations"].items():
            services.add_row(f"{s['mode']}/{s['service']}", name,
                             "heavy" if op["heavy"] else "fast", op.get("description") or "")
    console.print(services)
    if listing["disabled"]:
        disabled = Table("plugin", "distribution", "reason", title="Disabled plugins")
        for d in listing["disabled"]:
            disabled.add_row(d["name"], d["distribution"] or "", d["reason"])
        console.print(disabled)
    if listing["failures"]:
        failed = Table("plugin", "distribution", "reason", title="Failed plugins")
        for f in listing["failures"]:
            failed.add_row(f["name"], f["distribution"] or "", f["reason"])
        console.print(failed)
        sys.exit(1)
