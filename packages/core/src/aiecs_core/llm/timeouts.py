"""Per-request timeouts: the configured one, capped by the task's deadline; and the
notice a user gets while a provider has not answered yet (:class:`WaitNotice`)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from .where import names

if TYPE_CHECKING:
    from ..service import OperationContext

__all__ = ["WAIT_NOTICE", "WaitNotice", "request_timeout", "timeout_setting", "waiting"]

#: Seconds without a first byte from a provider before the user is told (and again after
#: each further period): ``AIECS_WAIT_NOTICE``.
WAIT_NOTICE = 10.0


def timeout_setting(provider: str, env_var: str | None, default: float) -> float:
    """The per-request timeout in seconds set by the environment variable ``env_var``, or
    ``default`` when it is unset or blank (or ``env_var`` is None).

    Raises :class:`ConfigurationError` naming the variable when it is not a positive number.
    """
    raw = os.environ.get(env_var, "").strip() if env_var else ""
    if not raw:
        return default
    try:
        timeout = float(raw)
        if not timeout > 0:
            raise ValueError
    except ValueError:
        raise ConfigurationError(
            f"{provider}: {env_var} must be a positive number of seconds, got {raw!r}",
            env_var=env_var,
        ) from None
    return timeout


def request_timeout(timeout: float, remaining: float | None, grace: float) -> float:
    """The explicit timeout of one request: the configured ``timeout``, or, when the task
    has a deadline, the time ``remaining`` until it plus ``grace`` if that is less (at
    least 0.05 s). The worker cancels the call at the deadline, rather than racing the
    SDK's timeout."""
    if remaining is None:
        return timeout
    return max(0.05, min(timeout, remaining + grace))


class WaitNotice:
    """Until :meth:`stop`, a progress event every ``AIECS_WAIT_NOTICE`` seconds (10) while
    the provider has sent nothing: ``what`` (provider, host, model), how long it has waited
    and when the request gives up. A server that accepts connections and never answers is
    then seen within seconds, not when the request times out (``OPENAI_TIMEOUT``, 120 s)
    or the task does (``CELERY_TASK_SOFT_TIME_LIMIT``)."""

    def __init__(self, ctx: OperationContext, what: str, timeout: float) -> None:
        self.ctx = ctx
        self.what = what
        self.timeout = timeout
        self.every = timeout_setting("aiecs", "AIECS_WAIT_NOTICE", WAIT_NOTICE)
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0

    def start(self) -> WaitNotice:
        """Start counting (on the running event loop): a timer, not a task (no coroutine
        to create, step and cancel per call: the notice rarely fires)."""
        self._started = time.monotonic()
        self._timer = asyncio.get_running_loop().call_later(self.every, self._notice)
        return self

    def _notice(self) -> None:
        if self._timer is None:
            return
        self._timer = asyncio.get_running_loop().call_later(self.every, self._notice)
        waited = time.monotonic() - self._started
        self.ctx.progress(None, f"{self.what}: no answer yet after {round(waited, 1):g} "
                                f"s (the request gives up after {self.timeout:g} s)")

    def stop(self) -> None:
        """The provider answered, or the request ended: no more notices (idempotent)."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def __enter__(self) -> WaitNotice:
        return self if self._timer is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def waiting(ctx: OperationContext, provider: str, where: str | None, timeout: float, *,
            model: str | None = None, endpoint_id: str | None = None) -> WaitNotice:
    """The started :class:`WaitNotice` of a call to ``where`` (``host:port``), in every
    provider's words: ``provider: waiting for HOST:PORT (endpoint 'E', model 'M'): no
    answer yet after 10 s (the request gives up after 120 s)``. Stop it at the first byte
    (or use it as a context manager around a call that answers all at once)."""
    asked = names(model, endpoint_id)
    what = f"{provider}: waiting for {where or 'the server'}"
    return WaitNotice(ctx, f"{what} ({', '.join(asked)})" if asked else what, timeout).start()
