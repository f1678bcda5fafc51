"""aiecs-worker: the Celery app, the fast/heavy tasks and the progress path.

``celery -A aiecs_worker worker`` starts a worker consuming ``fast_tasks`` and
``heavy_tasks``. ``from aiecs_worker import execute_task, execute_heavy_task`` gives the
specification's tasks.
"""

from . import redaction as _redaction  # noqa: F401 - logging signal hooks
from . import startup as _startup  # noqa: F401 - the start-up report of plugins
from . import warm as _warm  # noqa: F401 - providers warmed off the loop at start
from .app import FAST_QUEUE, HEAVY_QUEUE, app
from .events import celery_task_id
from .tasks import execute_heavy_task, execute_task

celery = app

__all__ = ["FAST_QUEUE", "HEAVY_QUEUE", "app", "celery", "celery_task_id", "execute_heavy_task",
           "execute_task"]
