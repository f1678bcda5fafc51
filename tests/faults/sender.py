"""A client process: submits the executions given as JSON on stdin with the public API
(``execute_task.delay``, or ``apply_async`` with an item's ``"__options__"``), against
the broker and Redis named by CELERY_BROKER_URL / REDIS_URL."""

from __future__ import annotations

import json
import sys

if __name__ == "__main__":
    from aiecs_worker import execute_task

    for kwargs in json.load(sys.stdin):
        options = kwargs.pop("__options__", None)
        if options:
            execute_task.apply_async(kwargs=kwargs, **options)
        else:
            execute_task.delay(**kwargs)
