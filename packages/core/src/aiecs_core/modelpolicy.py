"""The operator's model policy: which model ids each provider accepts, and the ceiling on
``max_output_tokens``.

Core holds no settings: the process that reads them (``aiecs_worker``, in every worker,
server, beat and CLI process) installs the policy with :func:`install_model_policy`, and
:func:`aiecs_core.validate_input` applies it, through :meth:`Service.check_input`, to every
operation's validated input: at submission (HTTP, batches, workflows, schedules) and again
in the worker before the provider is called. Without an installed policy everything the
input models accept passes.

The policy looks at the input's ``model`` (a string) and ``max_output_tokens`` (an int)
fields, whatever the operation: every LLM provider's ``chat`` and ``embed``, and any
plugin's operation using those names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InputValidationError

__all__ = ["ModelPolicy", "current_model_policy", "install_model_policy"]

#: The key of :attr:`ModelPolicy.max_output_tokens` that applies to every other provider.
ANY_PROVIDER = "*"


@dataclass(frozen=True)
class ModelPolicy:
    """What the operator allows."""

    models: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Provider name -> the model ids its services accept. A provider absent accepts any
    model id (that its input model accepts); an empty set accepts none."""
    max_output_tokens: Mapping[str, int] = field(default_factory=dict)
    """Provider name (or ``"*"``, every other) -> the largest ``max_output_tokens``."""

    @classmethod
    def build(cls, models: Mapping[str, Iterable[str]] | None = None,
              max_output_tokens: Mapping[str, int] | int | None = None) -> ModelPolicy:
        """A policy from allow-lists and ceilings as the settings hold them."""
        ceilings = ({ANY_PROVIDER: max_output_tokens} if isinstance(max_output_tokens, int)
                    else dict(max_output_tokens or {}))
        return cls({p: frozenset(ids) for p, ids in (models or {}).items()}, ceilings)

    def ceiling(self, provider: str) -> int | None:
        """The largest ``max_output_tokens`` ``provider`` may be asked for (None: no ceiling)."""
        return self.max_output_tokens.get(provider, self.max_output_tokens.get(ANY_PROVIDER))

    def check(self, provider: str, data: Any) -> None:
        """Raise :class:`InputValidationError` when ``data`` (an operation's validated
        input) names a model ``provider`` may not use, or asks for more output tokens than
        its ceiling."""
        model = getattr(data, "model", None)
        allowed = self.models.get(provider)
        if isinstance(model, str) and allowed is not None and model not in allowed:
            listed = ", ".join(sorted(allowed)) or "none"
            raise InputValidationError(
                f"model: {model!r} is not allowed for provider {provider!r} "
                f"(AIECS_MODELS); allowed: {listed}",
                field="model", provider=provider, allowed=sorted(allowed))
        tokens = getattr(data, "max_output_tokens", None)
        ceiling = self.ceiling(provider)
        if (isinstance(tokens, int) and not isinstance(tokens, bool) and ceiling is not None
                and tokens > ceiling):
            raise InputValidationError(
                f"max_output_tokens: {tokens} is above the ceiling of {ceiling} for provider "
                f"{provider!r} (AIECS_MAX_OUTPUT_TOKENS)",
                field="max_output_tokens", provider=provider, ceiling=ceiling)


#: A function returning the current policy (None: none).
PolicySource = Callable[[], "ModelPolicy | None"]
_source: PolicySource | None = None


def install_model_policy(source: ModelPolicy | PolicySource | None) -> PolicySource | None:
    """Install the process's policy: a :class:`ModelPolicy`, or a function returning the
    current one (called on each check, so it may follow reloaded settings); None removes
    it. Returns the source it replaced (to put it back)."""
    global _source
    previous = _source
    if isinstance(source, ModelPolicy):
        policy = source
        _source = lambda: policy  # noqa: E731
    else:
        _source = source
    return previous


def current_model_policy() -> ModelPolicy | None:
    """The installed policy (None: none installed, everything passes)."""
    return None if _source is None else _source()
