"""Per-request timeouts: the configured one, capped by the task's deadline."""

from __future__ import annotations

import os

from ..errors import ConfigurationError

__all__ = ["request_timeout", "timeout_setting"]


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
