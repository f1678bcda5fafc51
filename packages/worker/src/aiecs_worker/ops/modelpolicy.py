"""The operator's model policy (``AIECS_MODELS``, ``AIECS_MAX_OUTPUT_TOKENS``), installed
into :mod:`aiecs_core.modelpolicy` for this process.

Imported by ``aiecs_worker`` itself, so every process that submits or runs work (worker,
progress server, beat, CLI, a script calling ``control.submit``) applies it: in
:func:`aiecs_core.validate_input`, at submission (``422`` on HTTP, a refused batch,
workflow or schedule) and again in the worker before the provider is called (``FAILED``).
The policy follows :func:`~aiecs_worker.settings.get_settings` (settings reloaded after
``get_settings.cache_clear()`` are applied on the next check).
"""

from __future__ import annotations

import threading

from aiecs_core.modelpolicy import ModelPolicy, install_model_policy

from ..settings import Settings, get_settings

__all__ = ["current_policy", "policy_for"]

_lock = threading.Lock()
_cached: tuple[Settings, ModelPolicy] | None = None


def policy_for(settings: Settings) -> ModelPolicy:
    """The policy of ``settings``."""
    return ModelPolicy.build(settings.aiecs_models, settings.aiecs_max_output_tokens)


def current_policy() -> ModelPolicy:
    """The policy of the process's settings (built once per settings object)."""
    global _cached
    settings = get_settings()
    cached = _cached
    if cached is not None and cached[0] is settings:
        return cached[1]
    with _lock:
        _cached = (settings, policy_for(settings))
        return _cached[1]


install_model_policy(current_policy)
