"""Every ``aiecs`` command and each of its options is documented (datasette's
tests/test_docs.py, for the CLI): the click tree is walked, and each command must have a
row of its own in a README's command table (``| `aiecs batch show ...` | ... |``) naming
every option it takes."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from aiecs_worker.cli import main
from aiecs_worker.cli.common import client_options

REPO = Path(__file__).resolve().parents[2]
ROWS = [line for p in ("README.md", "packages/worker/README.md")
        for line in (REPO / p).read_text().splitlines() if line.startswith("| `aiecs ")]


def _commands(group: click.Group, prefix: str = "aiecs"):
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        if isinstance(command, click.Group):
            yield from _commands(command, path)
        else:
            yield path, command


COMMANDS = list(_commands(main))
#: ``--server``, ``--token``, ``--user``: the option group every command talking to the
#: server takes, documented once (below the table) rather than in each row.
CLIENT_OPTIONS = {opt for param in client_options(lambda: None).__click_params__
                  for opt in param.opts}


def _rows(path: str) -> list[str]:
    # a row documents the command when it names it as `aiecs ...` (several per row: a / b)
    return [row for row in ROWS if f"`{path} " in row or f"`{path}`" in row]


def test_the_tree_is_walked():
    paths = {path for path, _ in COMMANDS}
    assert {"aiecs serve", "aiecs batch show", "aiecs token revoke", "aiecs worker"} <= paths
    assert len(paths) >= 19
    assert {"--server", "--token", "--user"} == CLIENT_OPTIONS


def test_the_client_options_are_documented_once_with_the_commands_taking_them():
    text = (REPO / "packages/worker/README.md").read_text()
    paragraph = next(p for p in text.split("\n\n") if "**client options**" in p)
    assert all(opt in paragraph for opt in CLIENT_OPTIONS), paragraph
    takers = {path.split()[1] for path, command in COMMANDS
              if {o for p in command.params for o in p.opts} >= CLIENT_OPTIONS}
    assert takers == {"submit", "watch", "schedule", "batch", "workflow", "budget", "history",
                      "usage", "template"}
    assert all(f"`{name}`" in paragraph for name in takers), paragraph


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_has_a_row_naming_its_options(path, command):
    rows = _rows(path)
    assert rows, f"`{path}` has no row in the command tables of the READMEs"
    text = " ".join(rows)
    missing = [opt for param in command.params if isinstance(param, click.Option)
               for opt in param.opts + param.secondary_opts
               if opt.startswith("--") and opt not in CLIENT_OPTIONS and opt not in text]
    assert not missing, f"`{path}`: options not documented in its row: {missing}"
