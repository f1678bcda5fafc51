"""Layer 4, the runner: what runs inside a worker process. The Celery task definitions
(``tasks``), the runtime (one event loop per process), the poison guard, rate limits,
provider warm-up, beat's scheduler, the start-up report and the upstream fixes. The
package init (``aiecs_worker``) wires them into the app. Nothing but the package init
imports the runner (see docs/architecture.md).
"""
