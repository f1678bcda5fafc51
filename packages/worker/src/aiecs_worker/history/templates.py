"""Submitting by template: ``template`` (``{"name", "version"}`` or ``{"name", "label"}``)
plus ``variables`` instead of ``mode``, ``service``, ``task_name`` and ``input_data``.

:class:`Resolver` turns such a submission into an ordinary one, once, at submission: it
looks the version up (a label is read now, or was at most AIECS_TEMPLATE_LABEL_TTL
seconds ago by this process, which then tried no label move; the version it pointed at is
what runs, however the label moves later), renders the input
(:func:`aiecs_history.rendering.render`: unknown, missing or schema-invalid variables
refused), and returns the fields of an ordinary submission with ``template = {"name",
"version"}``: the message, the events and the history row carry that. Retries,
redeliveries and workflow releases reuse the message or the stored step, never the label.
The rendered input then goes through the normal submission check
(:mod:`aiecs_worker.store.admission`) like any other.

Every producer path calls it (HTTP ``POST /tasks``, batch items, workflow steps,
schedules, ``execute_task.delay(template=..., variables=...)``, ``aiecs submit
--template``). One Resolver per submission looks each reference up once: all the items
of a batch run the same version.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time
from collections.abc import Mapping
from typing import Any

from aiecs_core import AiecsError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..settings import get_settings
from . import engine as engines
from .engine import bounded, engine, require_history

__all__ = ["OPERATION_FIELDS", "Resolver", "TemplateSpec", "expand", "is_templated",
           "parse_reference", "publish_plugin_templates"]

#: What a templated submission must not give itself: the template says it.
OPERATION_FIELDS = ("mode", "service", "task_name", "operation", "input_data")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
_LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class TemplateSpec(BaseModel):
    """A submission's reference to a template: a version, or a label (default
    ``production``) read at submission."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    label: str | None = Field(default=None, pattern=_LABEL)

    @model_validator(mode="after")
    def _one(self) -> TemplateSpec:
        if self.version is not None and self.label is not None:
            raise ValueError("give version or label, not both")
        return self


def parse_reference(text: str) -> TemplateSpec:
    """``NAME``, ``NAME@VERSION`` or ``NAME:LABEL`` (the CLI's form); ValueError."""
    m = re.fullmatch(r"([^@:]+)(?:@(\d+)|:([^@:]+))?", text)
    if m is None:
        raise ValueError(f"{text!r} is not NAME, NAME@VERSION or NAME:LABEL")
    try:
        return TemplateSpec(name=m.group(1), version=int(m.group(2)) if m.group(2) else None,
                            label=m.group(3))
    except ValidationError as exc:
        raise ValueError(f"{text!r}: {_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'template'}: {e['msg']}"
                     for e in exc.errors(include_url=False, include_input=False))


def _is_ref(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "$ref" in value


def is_templated(raw: Any) -> bool:
    """Whether a submission's fields ask for a template (``template`` or ``variables``)."""
    return isinstance(raw, Mapping) and ("template" in raw or "variables" in raw)


@functools.lru_cache(maxsize=256)
def _cached_version(database_url: str, name: str, version: int) -> Any:
    """A template version of the database at ``database_url`` (the cache's key): versions
    are immutable, so this process keeps the 256 it used last (a failure is not kept)."""
    from aiecs_history import templates as store

    return bounded(lambda eng: store.get_version(eng, name, version),
                   f"template {name!r} could not be resolved")


#: What a label pointed at when this process last read it: ``(database URL, name, label)``
#: -> ``(read before this time.monotonic(), moves tried here by then, version)``; at most
#: :data:`_LABELS_KEPT` entries (then emptied).
_labels: dict[tuple[str, str, str], tuple[float, int, int]] = {}
_LABELS_KEPT = 1024
#: The clock of the labels kept (time.monotonic; a test moves it).
_now = time.monotonic


def _label_version(spec: TemplateSpec) -> int:
    """The version ``spec``'s label points at: read from the database, or what this process
    read less than AIECS_TEMPLATE_LABEL_TTL seconds ago if it has tried no label move since
    (:func:`aiecs_history.templates.moves`). A label that does not exist is not kept."""
    from aiecs_history import templates as store

    s = get_settings()
    label = spec.label or store.DEFAULT_LABEL
    key = (s.database_url, spec.name, label)
    started, moved = _now(), store.moves()  # before the read: a move after it reads again
    kept = _labels.get(key)
    if kept is not None and started - kept[0] < s.aiecs_template_label_ttl \
            and kept[1] == moved:
        return kept[2]
    number = bounded(lambda eng: store.label_version(eng, spec.name, label),
                     f"template {spec.name!r} could not be resolved")
    if s.aiecs_template_label_ttl > 0:
        if len(_labels) >= _LABELS_KEPT:
            _labels.clear()
        _labels[key] = (started, moved, number)
    return number


def clear_cache() -> None:
    """Forget the kept versions and labels (tests; engines disposed)."""
    _cached_version.cache_clear()
    _labels.clear()


engines._on_dispose.append(clear_cache)


class Resolver:
    """Resolves the templated submissions of one call (each reference looked up once)."""

    def __init__(self) -> None:
        self._versions: dict[TemplateSpec, Any] = {}

    def version(self, spec: TemplateSpec) -> Any:
        """The :class:`aiecs_history.templates.TemplateVersion` ``spec`` means now."""
        found = self._versions.get(spec)
        if found is None:
            require_history()
            # a label is read now, or was less than AIECS_TEMPLATE_LABEL_TTL ago; the
            # version it names is immutable, so kept
            number = spec.version if spec.version is not None else _label_version(spec)
            found = self._versions[spec] = _cached_version(
                get_settings().database_url, spec.name, number)
        return found

    def expand(self, raw: Mapping[str, Any], *, refs: bool = False) -> dict[str, Any]:
        """``raw`` (a submission's fields) with ``template`` + ``variables`` replaced by
        ``mode``, ``service``, ``task_name``, ``input_data`` and ``template = {"name",
        "version"}``; ``raw`` itself (as a dict) when it names no template.

        ``refs``: a variable may be a workflow reference (``{"$ref": ...}``), filling a
        whole string. Raises TemplateVariablesError (422), TemplateNotFoundError (404),
        HistoryUnavailableError (no ``history`` extra)."""
        if not is_templated(raw):
            return dict(raw)
        require_history()
        from aiecs_history.errors import TemplateVariablesError
        from aiecs_history.rendering import render

        given = [f for f in OPERATION_FIELDS if f in raw]
        if "template" not in raw:
            raise TemplateVariablesError("variables go with template: give template "
                                         '({"name": ..., "label"|"version": ...})')
        if given:
            raise TemplateVariablesError(
                f"a template says what to run: remove {', '.join(given)} (give template "
                "and variables only)")
        try:
            spec = TemplateSpec.model_validate(raw["template"])
        except ValidationError as exc:
            raise TemplateVariablesError(f"template: {_problems(exc)}") from None
        variables = raw.get("variables") or {}
        if not isinstance(variables, Mapping):
            raise TemplateVariablesError("variables must be a JSON object")
        found = self.version(spec)
        try:
            input_data = render(found.content, variables, is_ref=_is_ref if refs else
                                (lambda v: False))
        except TemplateVariablesError as exc:
            raise TemplateVariablesError(
                f"template {found.name!r} version {found.version}: {exc.message}") from None
        out = {k: v for k, v in raw.items() if k not in ("template", "variables")}
        out.update(mode=found.content.mode, service=found.content.service,
                   task_name=found.content.operation, input_data=input_data,
                   template={"name": found.name, "version": found.version})
        return out


def expand(raw: Mapping[str, Any], *, refs: bool = False) -> dict[str, Any]:
    """:meth:`Resolver.expand` with a resolver of its own (one submission)."""
    return Resolver().expand(raw, refs=refs)


def publish_plugin_templates(registry: Any) -> list[str]:
    """Publish the templates the loaded plugins ship (hook ``register_templates``) into the
    history database: a new version of each only when its content changed (the content
    hash), and label ``production`` set to it when the template has no such label yet
    (a later version never moves it: operators do). Returns one line per template for
    the log; a template that is invalid is reported there, the others are published.
    The database unreachable raises (SQLAlchemy's OperationalError)."""
    require_history()
    from aiecs_history import templates as store
    from aiecs_history.errors import LabelConflictError

    shipped, failures = registry.templates()
    lines = [f"plugin {f.name}: {f.reason}" for f in failures]
    for info, template in shipped:
        name = template.get("name")
        content = {k: v for k, v in template.items() if k != "name"}
        source = info.distribution or info.name
        try:
            version, created = store.publish(engine(), name, content,
                                             created_by=f"plugin:{info.name}", source=source)
        except AiecsError as exc:  # an invalid template never stops the others (an
            # unreachable database raises: the caller says so once)
            lines.append(f"plugin {info.name}: template {name!r} not published: "
                         f"{exc.message}")
            continue
        # production already pointing somewhere is the operators' choice: left as it is
        with contextlib.suppress(LabelConflictError):
            store.move_label(engine(), name, store.DEFAULT_LABEL, version.version,
                             expected_version=None, moved_by=f"plugin:{info.name}")
        lines.append(f"plugin {info.name}: template {name!r} version {version.version}"
                     + (" published" if created else " (unchanged)"))
    return lines
