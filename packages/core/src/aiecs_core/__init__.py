"""aiecs-core: task and service contracts, errors, plugin hooks and the service registry.

Every name of ``__all__`` is importable from here (``from aiecs_core import TaskRequest``),
but is imported on first access (PEP 562 module ``__getattr__``): ``import aiecs_core``
alone loads no submodule, so neither pydantic nor pluggy, and a process pays only for
what it uses (the errors need neither; the models need pydantic; the registry, pluggy
and the entry-point scan). Submodules (``aiecs_core.llm``, ``aiecs_core.testing``, ...)
are reachable as attributes the same way.
"""

# ruff: noqa: F401 - the TYPE_CHECKING imports below are re-exports (listed in _WHERE)

from __future__ import annotations

import importlib

#: ``typing.TYPE_CHECKING`` without importing typing (13 ms from source): type checkers
#: treat a module-level ``TYPE_CHECKING = False`` the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; resolved lazily below
    # (``name as name``: an explicit re-export, as mypy's strict mode asks)
    from .errors import *  # noqa: F403
    from .hookspecs import ENTRY_POINT_GROUP as ENTRY_POINT_GROUP
    from .hookspecs import hookimpl as hookimpl
    from .modelpolicy import (
        ModelPolicy as ModelPolicy,
    )
    from .modelpolicy import (
        current_model_policy as current_model_policy,
    )
    from .modelpolicy import (
        install_model_policy as install_model_policy,
    )
    from .models import *  # noqa: F403
    from .redaction import (
        install_log_redaction as install_log_redaction,
    )
    from .redaction import (
        redact as redact,
    )
    from .redaction import (
        redact_data as redact_data,
    )
    from .redaction import (
        redact_json as redact_json,
    )
    from .redaction import (
        register_env_secrets as register_env_secrets,
    )
    from .redaction import (
        register_secret as register_secret,
    )
    from .registry import (
        ALLOW_ENV as ALLOW_ENV,
    )
    from .registry import (
        PluginFailure as PluginFailure,
    )
    from .registry import (
        PluginInfo as PluginInfo,
    )
    from .registry import (
        ServiceRegistry as ServiceRegistry,
    )
    from .registry import (
        get_registry as get_registry,
    )
    from .registry import (
        load_plugins as load_plugins,
    )
    from .registry import (
        reset_registry as reset_registry,
    )
    from .service import (
        OperationContext as OperationContext,
    )
    from .service import (
        OperationSpec as OperationSpec,
    )
    from .service import (
        RateLimitKey as RateLimitKey,
    )
    from .service import (
        RecordingContext as RecordingContext,
    )
    from .service import (
        Service as Service,
    )
    from .service import (
        invoke_operation as invoke_operation,
    )
    from .service import (
        operation as operation,
    )
    from .service import (
        validate_input as validate_input,
    )

#: Public name -> the submodule defining it. ``errors`` and ``models`` list their
#: ``__all__`` here (tests/core/test_lazy_imports.py keeps the lists equal).
_ERRORS = (
    "AiecsError",
    "AuthenticationError",
    "BudgetExceededError",
    "ConfigurationError",
    "DuplicateExecutionError",
    "InputValidationError",
    "InvalidRequestError",
    "InvalidTaskError",
    "ModelNotFoundError",
    "OperationError",
    "OperationNotFoundError",
    "PayloadTooLargeError",
    "PluginError",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderServerError",
    "ProviderTimeoutError",
    "QuotaExceededError",
    "RateLimitError",
    "ServiceNotFoundError",
    "StreamInterruptedError",
    "TaskCancelledError",
    "TaskTimeoutError",
    "WorkerLostError",
    "error_info",
)
_MODELS = (
    "ID_PATTERN",
    "TERMINAL_STATUSES",
    "Budget",
    "ErrorInfo",
    "EventType",
    "TaskEvent",
    "TaskRequest",
    "TaskResult",
    "TaskStatus",
    "TemplateRef",
    "Usage",
)
_WHERE: dict[str, str] = {
    **dict.fromkeys(_ERRORS, "errors"),
    **dict.fromkeys(_MODELS, "models"),
    "ENTRY_POINT_GROUP": "hookspecs",
    **dict.fromkeys(("ModelPolicy", "current_model_policy", "install_model_policy"),
                    "modelpolicy"),
    "hookimpl": "hookspecs",
    **dict.fromkeys(
        (
            "install_log_redaction",
            "redact",
            "redact_data",
            "redact_json",
            "register_env_secrets",
            "register_secret",
        ),
        "redaction",
    ),
    **dict.fromkeys(
        (
            "ALLOW_ENV",
            "PluginFailure",
            "PluginInfo",
            "ServiceRegistry",
            "get_registry",
            "load_plugins",
            "reset_registry",
        ),
        "registry",
    ),
    **dict.fromkeys(
        (
            "OperationContext",
            "OperationSpec",
            "RateLimitKey",
            "RecordingContext",
            "Service",
            "invoke_operation",
            "operation",
            "validate_input",
        ),
        "service",
    ),
}
_SUBMODULES = frozenset(
    {"errors", "hookspecs", "jsonlimits", "llm", "modelpolicy", "models", "redaction",
     "registry", "service", "testing"}
)

__all__ = list(_WHERE)


def __getattr__(name: str) -> object:
    module = _WHERE.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # later lookups are plain attribute reads
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBMODULES})
