"""Secrets never leave the worker: where the worker applies :mod:`aiecs_core.redaction`.

- :func:`install` registers the secrets the process is configured with (the values of
  every ``*_API_KEY``, ``*_SECRET_KEY``, ``*_SECRET``, ``*_TOKEN``, ``*_PASSWORD``
  variable, e.g. ``OPENAI_API_KEY``, ``XAI_API_KEY``, ``AIECS_SECRET_KEY``, and the
  passwords in the Redis URLs) and puts the redacting log filter on every log handler.
  It runs when Celery has set up the worker's logging (and the task logger's), and when
  the progress server starts. Provider plugins add theirs: ``Service.secret_env`` is
  registered with the service, and providers register keys and tokens they obtain.
- Events and terminal states are redacted as they are encoded for Redis
  (:func:`aiecs_worker.store.events.encode_event`, :func:`aiecs_worker.store.events.finish_args`),
  and what goes to Celery's result backend in :mod:`aiecs_worker.runner.tasks`.
"""

from __future__ import annotations

import contextlib
import urllib.parse
from typing import Any

from aiecs_core import install_log_redaction, register_env_secrets, register_secret
from celery import signals

from ..settings import Settings

__all__ = ["URL_ENV", "install"]

#: Variables holding URLs whose password is a secret.
URL_ENV = ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL")


def install(*loggers: Any) -> None:
    """Register the configured secrets and redact every log handler's records."""
    register_env_secrets()
    # the raw values (even invalid ones, which the settings' check reports) are redacted
    raw = Settings.environ()
    for name in URL_ENV:
        with contextlib.suppress(ValueError):  # unparsable: the settings report it
            register_secret(urllib.parse.urlsplit(raw.get(name.lower(), "")).password)
    install_log_redaction(*loggers)


@signals.after_setup_logger.connect
def _on_setup_logger(logger: Any = None, **_: Any) -> None:
    install(*([logger] if logger is not None else []))


@signals.after_setup_task_logger.connect
def _on_setup_task_logger(logger: Any = None, **_: Any) -> None:
    install(*([logger] if logger is not None else []))
