"""docs/migration.md is true: its aiecs paths import, aiecs installs no ``aiecs`` package
(the upstream distribution's name), and a producer sending by the specification's task
name, importing nothing of aiecs, is served by a real worker."""

from __future__ import annotations

import importlib
import importlib.util
import re
import uuid
from pathlib import Path

from celery import Celery

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "migration.md").read_text()


def test_the_aiecs_side_imports():
    pairs = re.findall(r"`from (aiecs_\w+(?:\.\w+)*) import (\w+)`", DOC)
    assert len(pairs) >= 3
    for module, name in pairs:
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    assert "`celery -A aiecs_worker worker --loglevel=info`" in DOC


def test_no_aiecs_package_is_installed_by_the_workspace():
    # the decision: no compatibility module, the name is the upstream distribution's
    assert importlib.util.find_spec("aiecs") is None
    from aiecs_worker import app

    assert {"aiecs.tasks.worker.execute_task", "aiecs.tasks.worker.execute_heavy_task"} <= set(
        app.tasks)


def test_a_producer_by_the_specifications_name_is_served(aiecs_redis, start_worker):
    start_worker()
    block = re.search(r"```python\n(.*?)```", DOC, re.S).group(1)
    assert 'producer.send_task(\n    "aiecs.tasks.worker.execute_task", queue="fast_tasks"' \
        in block
    producer = Celery(broker=aiecs_redis.url, backend=aiecs_redis.url)
    task_id = f"task_{uuid.uuid4().hex[:8]}"
    result = producer.send_task(
        "aiecs.tasks.worker.execute_task", queue="fast_tasks",
        kwargs={"task_name": "echo", "user_id": "user_123", "task_id": task_id, "step": 1,
                "mode": "test", "service": "echo", "input_data": {"text": "by name"}})
    out = result.get(timeout=30)
    assert out["status"] == "completed" and out["result"]["text"] == "by name"
    producer.close()
