"""The ``aiecs`` command: run the progress server, the workers or a whole dev stack, mint
tokens, submit and watch tasks, batches, workflows and schedules, list plugins, check
health. One module per command (group); :mod:`.common` holds what they share and
:mod:`.client` is the one HTTP and Socket.IO client of the progress server.

``submit`` and ``watch`` authenticate with ``--token`` / ``AIECS_TOKEN``, or a token
signed locally for ``--user`` with ``AIECS_SECRET_KEY``, or, against a development server
(``aiecs dev``), one it hands out: nothing to copy and paste on a dev machine.
"""

from __future__ import annotations

import click

from .batch import batch
from .budget import budget
from .dev import dev_command
from .health import health_command
from .history import forget_command, history_command, usage_command
from .plugins import plugins
from .recorder import recorder
from .schedule import schedule
from .serve import serve
from .submit import submit, watch
from .template import template
from .token import token
from .worker import worker
from .workflow import workflow

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aiecs-worker", prog_name="aiecs")
def main() -> None:
    """aiecs: AI provider calls as Celery tasks, with live progress to the user."""


for _command in (serve, token, submit, watch, schedule, plugins, health_command, dev_command,
                 worker, batch, workflow, budget, history_command, usage_command,
                 forget_command, recorder, template):
    main.add_command(_command)
