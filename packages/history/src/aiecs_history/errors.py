"""The templates' errors: :class:`aiecs_core.AiecsError` subclasses, so every submission path
reports them as it reports an invalid input (HTTP 422 unless said otherwise, an exception
in Python, a message and exit status in the CLI)."""

from __future__ import annotations

from aiecs_core import AiecsError, InputValidationError

__all__ = ["InvalidTemplateError", "LabelConflictError", "TemplateNotFoundError",
           "TemplateVariablesError"]


class InvalidTemplateError(AiecsError):
    """A template's content is malformed (its JSON Schema, a placeholder, a name)."""


class TemplateNotFoundError(AiecsError):
    """No such template, version or label (HTTP 404 on the templates API, 422 when a
    submission names it)."""


class LabelConflictError(AiecsError):
    """A label move's ``expected_version`` is not the version the label points at now
    (another operator moved it first): HTTP 409. ``details["current_version"]``."""

    @property
    def current_version(self) -> int | None:
        """The version the label points at now (None: the label does not exist)."""
        return self.details.get("current_version")


class TemplateVariablesError(InputValidationError):
    """The variables of a submission do not fit the template: unknown, missing, or refused
    by its JSON Schema."""
