"""``aiecs recorder``: write finished executions from the outbox to the history database.

Several may run (on one host or many): they share the outbox's consumer group and take
over the entries of one that died. SIGTERM or SIGINT stops it after its current batch
(what it had not acknowledged is taken over by the others, or by its next start).
"""

from __future__ import annotations

import logging
import signal

import click

from ..settings import get_settings
from .common import fail

__all__ = ["recorder"]


@click.command("recorder")
@click.option("--database-url", default=None, metavar="URL",
              help="The history database (default: AIECS_DATABASE_URL, else SQLite in "
                   "AIECS_DATA_DIR).")
@click.option("--metrics-port", type=int, default=None, metavar="PORT",
              help="Serve the recorder's Prometheus metrics (aiecs_outbox_backlog, "
                   "aiecs_recorder_*) on http://0.0.0.0:PORT/metrics.")
@click.option("--no-retention", is_flag=True, default=False,
              help="Do not run the retention job in this recorder (another one does).")
def recorder(database_url: str | None, metrics_port: int | None, no_retention: bool) -> None:
    """Record finished executions (the outbox in Redis) in the history database."""
    from ..history import HistoryUnavailableError
    from ..history.recorder import Recorder

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        rec = Recorder(get_settings(), database_url=database_url, retention=not no_retention)
    except HistoryUnavailableError as exc:
        fail(str(exc), 1)
    if metrics_port is not None:
        rec.metrics.serve(metrics_port)

    def on_signal(_signum, _frame):
        rec.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rec.prepare()  # the schema up to date (db.upgrade) and the consumer group made
    url = rec.engine.url.render_as_string(hide_password=True)
    click.echo(f"aiecs recorder {rec.consumer}: recording into {url}")
    rec.run(prepare=False)
    click.echo("aiecs recorder: stopped")
