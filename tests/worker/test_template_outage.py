"""``execute_task.delay(template=...)`` while the history database is down or hung: a
clear error within AIECS_DATABASE_TIMEOUT, nothing queued (a real PostgreSQL, paused with
SIGSTOP, then stopped)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.server.test_templates import GREET
from tests.support.postgres import PostgresServer


def _server_pids(pg: PostgresServer) -> list[int]:
    """The postmaster and its children (each backend calls setsid: signalling the
    postmaster's group misses them)."""
    pids = [pg.proc.pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pg.proc.pid:
                pids.append(int(entry))
    return pids


def test_a_templated_delay_fails_clearly_when_the_database_hangs_or_is_down(submitter_env):
    from aiecs_history import templates as store
    from aiecs_worker import execute_task
    from aiecs_worker.history import HistoryDatabaseUnreachableError
    from aiecs_worker.history import engine as engines
    from aiecs_worker.history.templates import expand

    pg = PostgresServer().start()
    try:
        # the label read at every submission (AIECS_TEMPLATE_LABEL_TTL 0): each one waits on
        # the database
        submitter_env(AIECS_DATABASE_URL=pg.create_database(), AIECS_DATABASE_TIMEOUT="1",
                      AIECS_TEMPLATE_LABEL_TTL="0")
        store.publish(engines.engine(), "greet", GREET)
        store.move_label(engines.engine(), "greet", "production", 1, expected_version=None)
        sub = {"user_id": "u", "task_id": "t", "step": 1,
               "template": {"name": "greet", "label": "production"},
               "variables": {"who": "a"}}
        assert expand(sub)["input_data"]["text"] == "v1 a"  # a pooled connection now
        pids = _server_pids(pg)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(HistoryDatabaseUnreachableError,
                               match="template 'greet' could not be resolved: the history "
                                     r"database did not answer within 1 s"):
                execute_task.delay(**sub)
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        pg.stop()
        with pytest.raises(HistoryDatabaseUnreachableError,
                           match="could not be resolved: the history database is unreachable"):
            execute_task.delay(**sub)
    finally:
        engines.dispose()
        pg.cleanup()
