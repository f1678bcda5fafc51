"""One worker for a whole test module: starting one per test would cost seconds each."""

from __future__ import annotations

import os

import pytest

from tests.support.processes import WorkerProcess


@pytest.fixture(scope="module")
def module_worker():
    """A threads worker on the session's Redis (flushing Redis between tests is harmless
    to it), with a 3 s deadline so a slow echo times out."""
    worker = WorkerProcess(redis_url=os.environ["REDIS_URL"], concurrency=8,
                           env={"CELERY_TASK_SOFT_TIME_LIMIT": "3",
                                "CELERY_TASK_TIME_LIMIT": "10"})
    worker.start()
    yield worker
    worker.stop()
    print("\n".join(worker.log().splitlines()[-60:]))
    worker.log_path.unlink(missing_ok=True)


@pytest.fixture
def worker(aiecs_redis, module_worker):
    """The module's worker, with Redis flushed for this test."""
    return module_worker
