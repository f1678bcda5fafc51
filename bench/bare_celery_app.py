"""Bare Celery, configured like aiecs (Redis, JSON, acks_late, prefetch 1): the baseline.

Run by ``bench/throughput.py`` as ``celery -A bare_celery_app worker``.
"""

import os

from celery import Celery

url = os.environ["CELERY_BROKER_URL"]
app = Celery("bare", broker=url, backend=url)
app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"],
    task_acks_late=True, worker_prefetch_multiplier=1,
)


@app.task(name="bare.noop")
def noop(**kwargs):
    return {"ok": True}
