"""aiecs-core: task and service contracts, errors, plugin hooks and the service registry."""

from .errors import *  # noqa: F403
from .errors import __all__ as _errors_all
from .hookspecs import ENTRY_POINT_GROUP, hookimpl
from .models import *  # noqa: F403
from .models import __all__ as _models_all
from .redaction import (
    install_log_redaction,
    redact,
    redact_data,
    redact_json,
    register_env_secrets,
    register_secret,
)
from .registry import (
    ALLOW_ENV,
    PluginFailure,
    PluginInfo,
    ServiceRegistry,
    get_registry,
    load_plugins,
    reset_registry,
)
from .service import (
    OperationContext,
    OperationSpec,
    RateLimitKey,
    RecordingContext,
    Service,
    invoke_operation,
    operation,
    validate_input,
)

__all__ = [
    *_errors_all,
    *_models_all,
    "ALLOW_ENV",
    "ENTRY_POINT_GROUP",
    "OperationContext",
    "OperationSpec",
    "PluginFailure",
    "PluginInfo",
    "RateLimitKey",
    "RecordingContext",
    "Service",
    "ServiceRegistry",
    "get_registry",
    "hookimpl",
    "install_log_redaction",
    "invoke_operation",
    "load_plugins",
    "operation",
    "redact",
    "redact_data",
    "redact_json",
    "register_env_secrets",
    "register_secret",
    "reset_registry",
    "validate_input",
]
