"""aiecs-worker: the Celery app, the fast/heavy tasks and the progress path.

``celery -A aiecs_worker worker`` starts a worker consuming ``fast_tasks`` and
``heavy_tasks``. ``from aiecs_worker import execute_task, execute_heavy_task`` gives the
specification's tasks.
"""

from .app import app
from .ops import logs as _logs  # noqa: F401 - JSON logs (AIECS_LOG_FORMAT)
from .ops import metrics_http as _metrics_http  # noqa: F401 - metrics served by the worker
from .ops import modelpolicy as _modelpolicy  # noqa: F401 - AIECS_MODELS, output ceilings
from .ops import redaction as _redaction  # noqa: F401 - logging signal hooks
from .producer import control
from .producer.batch import cancel_batch, get_batch, submit_batch
from .producer.flow import cancel_workflow, get_workflow, submit_workflow
from .routing import FAST_QUEUE, HEAVY_QUEUE
from .runner import startup as _startup  # noqa: F401 - the start-up report of plugins
from .runner import warm as _warm  # noqa: F401 - providers warmed off the loop at start
from .runner.poison import install as _install_poison_guard
from .runner.tasks import execute_heavy_task, execute_task
from .runner.upstream_fixes import install as _install_upstream_fixes
from .store import gauges as _gauges  # noqa: F401 - queue depth etc. on the worker's page
from .store.events import celery_task_id

# The worker's parts are wired into the app here, not by aiecs_worker.app (which must not
# import them): any import of aiecs_worker.app runs this package's init first, so the app
# is never used without them.
_install_poison_guard(app)  # malformed broker messages are dead-lettered
# a Redis restart must not stop the worker, nor a reconnect deadlock a threads worker;
# one Redis client per broker channel (see upstream_fixes)
_install_upstream_fixes()

celery = app

__all__ = ["FAST_QUEUE", "HEAVY_QUEUE", "app", "cancel_batch", "cancel_workflow", "celery",
           "celery_task_id", "control", "execute_heavy_task", "execute_task", "get_batch",
           "get_workflow", "submit_batch", "submit_workflow"]
