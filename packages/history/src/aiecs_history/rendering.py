"""A template's content and how it becomes an execution's input.

:class:`TemplateContent` is what a version holds: the operation it runs (mode, service,
operation), the input with ``{{variables}}``, the variables' JSON Schema, the defaults
(``model``, ``parameters``) and a description. :func:`content_hash` identifies it (SHA-256
of its canonical JSON): publishing identical content again is not a new version.

:func:`render` fills the placeholders:

- a string that is exactly ``"{{name}}"`` becomes the variable's value, of whatever JSON
  type (a list stays a list, a number a number);
- inside a longer string, ``{{name}}`` is replaced by the value as text (a string as is,
  anything else as its JSON);
- the variables are checked first: none unknown, none missing (a schema ``default`` fills
  in), and all valid for the JSON Schema (:mod:`jsonschema`, Draft 2020-12).

Then the defaults go under the rendered input: ``model`` and each of ``parameters`` apply
where the input does not set them. Nothing here touches a database.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jsonschema
from aiecs_core import ID_PATTERN
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import InvalidTemplateError, TemplateVariablesError

__all__ = ["LABEL_PATTERN", "NAME_PATTERN", "TemplateContent", "TemplateDefaults",
           "content_hash", "placeholders", "render"]

#: A template's name: no ``@`` or ``:`` (``NAME@VERSION``, ``NAME:LABEL`` in the CLI).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_VAR = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
_WHOLE = re.compile(r"^\{\{\s*(" + _VAR + r")\s*\}\}$")
_ANY = re.compile(r"\{\{\s*(" + _VAR + r")\s*\}\}")
#: A variable's value that fills a whole string may be a workflow reference
#: (``{"$ref": "steps.1.result.text"}``), resolved when the step is released.
_IsRef = Callable[[Any], bool]


class TemplateDefaults(BaseModel):
    """What the rendered input gets where it says nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = None
    """The model, unless the input names one."""
    parameters: dict[str, Any] = Field(default_factory=dict)
    """Input fields (``temperature``, ``max_output_tokens``, ...), unless the input sets
    them."""


#: Schemas longer than this (canonical JSON) are checked every time, not remembered.
_SCHEMA_CACHE_BYTES = 16_384


def _schema_problem_of(schema: Any) -> str | None:
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        return exc.message
    return None


@functools.lru_cache(maxsize=256)
def _schema_problem(canonical: str) -> str | None:
    """Why the schema (its canonical JSON) is not a valid JSON Schema, None when it is.
    Remembered: checking against the meta-schema takes milliseconds, and every submission
    by template reads its version back into a :class:`TemplateContent` (measured in
    ``python -m bench --scenarios allin``: 5 ms of a submission's CPU before this)."""
    return _schema_problem_of(json.loads(canonical))


class TemplateContent(BaseModel):
    """One version's content (immutable once published)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: str = Field(pattern=ID_PATTERN)
    service: str = Field(pattern=ID_PATTERN)
    operation: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.@\-]{0,127}$")
    input: dict[str, Any]
    """The operation's input, with ``{{variables}}`` in its strings."""
    variables_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    """JSON Schema (Draft 2020-12) of the variables object."""
    defaults: TemplateDefaults = Field(default_factory=TemplateDefaults)
    description: str = Field(default="", max_length=10_000)

    @functools.cached_property
    def used_variables(self) -> list[str]:
        """:func:`placeholders` of the input (worked out once per content)."""
        return placeholders(self.input)

    @functools.cached_property
    def validator(self) -> jsonschema.Draft202012Validator:
        """The compiled validator of ``variables_schema`` (shared by equal schemas)."""
        return _validator(json.dumps(self.variables_schema, sort_keys=True))

    @field_validator("variables_schema")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            key = json.dumps(v, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):  # not JSON: checked as it is, not remembered
            key = None
        if key is None or len(key) > _SCHEMA_CACHE_BYTES:  # the cache's memory stays small
            problem = _schema_problem_of(v)
        else:
            problem = _schema_problem(key)
        if problem is not None:
            raise ValueError(f"not a valid JSON Schema: {problem}")
        return v

    @classmethod
    def parse(cls, data: Any) -> TemplateContent:
        """The content from JSON data, or InvalidTemplateError saying what is wrong."""
        try:
            content = cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'template'}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False))
            raise InvalidTemplateError(f"invalid template: {problems}") from None
        declared = content.variables_schema.get("properties")
        if isinstance(declared, dict):
            undeclared = sorted(set(placeholders(content.input)) - set(declared))
            if undeclared:
                raise InvalidTemplateError(
                    "invalid template: input uses variables its variables_schema does not "
                    f"declare in properties: {', '.join(undeclared)}")
        return content

    def to_json(self) -> dict[str, Any]:
        """The content as JSON data (what is hashed, stored and exported)."""
        return self.model_dump(mode="json")


def content_hash(content: TemplateContent) -> str:
    """SHA-256 (hex) of the content's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(content.to_json(), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _strings(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def placeholders(value: Any) -> list[str]:
    """The variable names used in ``value``'s strings, sorted, each once."""
    return sorted({m.group(1) for s in _strings(value) for m in _ANY.finditer(s)})


def _check(content: TemplateContent, variables: Mapping[str, Any], is_ref: _IsRef
           ) -> dict[str, Any]:
    if not isinstance(variables, Mapping):
        raise TemplateVariablesError("variables must be a JSON object")
    used = content.used_variables
    props = content.variables_schema.get("properties")
    props = props if isinstance(props, dict) else {}
    known = set(used) | set(props)
    unknown = sorted(set(variables) - known)
    if unknown:
        raise TemplateVariablesError(
            f"unknown variable{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: the "
            f"template's variables are {', '.join(sorted(known)) or '(none)'}")
    values = dict(variables)
    for name in used:
        if name not in values and isinstance(props.get(name), dict) \
                and "default" in props[name]:
            values[name] = copy.deepcopy(props[name]["default"])
    missing = [n for n in used if n not in values]
    if missing:
        raise TemplateVariablesError(
            f"missing variable{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    refs = {k for k, v in values.items() if is_ref(v)}
    errors = [e for e in content.validator.iter_errors(values)
              if not (e.absolute_path and e.absolute_path[0] in refs)]
    if errors:
        e = min(errors, key=lambda x: len(x.absolute_path))
        where = ".".join(str(p) for p in e.absolute_path) or "variables"
        raise TemplateVariablesError(f"variable {where}: {e.message}")
    return values


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.Draft202012Validator:
    """The compiled validator of a variables schema (its canonical JSON), once per schema."""
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def render(content: TemplateContent, variables: Mapping[str, Any], *,
           is_ref: _IsRef = lambda v: False) -> dict[str, Any]:
    """The input ``content`` makes with ``variables``: checked (TemplateVariablesError),
    filled in, and with the defaults under it. A value for which ``is_ref`` is true
    (a workflow reference) skips the schema check and may only fill a whole string."""
    values = _check(content, variables, is_ref)

    def fill(v: Any) -> Any:
        if isinstance(v, str):
            whole = _WHOLE.fullmatch(v)
            if whole:
                return copy.deepcopy(values[whole.group(1)])

            def text(m: re.Match[str]) -> str:
                value = values[m.group(1)]
                if is_ref(value):
                    raise TemplateVariablesError(
                        f"variable {m.group(1)}: a $ref can only fill a whole string "
                        f'("{{{{{m.group(1)}}}}}"), not part of {v[:60]!r}')
                return value if isinstance(value, str) else json.dumps(value)

            return _ANY.sub(text, v)
        if isinstance(v, dict):
            return {k: fill(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fill(x) for x in v]
        return v

    rendered = fill(content.input)
    out = {**copy.deepcopy(content.defaults.parameters), **rendered}
    if content.defaults.model is not None and "model" not in rendered:
        out["model"] = content.defaults.model
    return out
