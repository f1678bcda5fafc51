r"""Model ids: the one rule every LLM provider applies to the ``model`` a user names.

A user names a *model*, never a resource: the project, location, endpoint and URL a call
goes to come from the operator's settings. A model id is one segment of letters, digits
and ``. _ : @ -`` (1-128 characters, starting with a letter or digit):
``gpt-4o-mini``, ``ft:gpt-4o-mini:org:name:id``, ``gemini-2.0-flash-001``,
``grok-2-1212``, ``claude-3-5-sonnet@20240620``.

Providers whose model only travels in a JSON body (OpenAI-compatible servers, where
``meta-llama/Llama-3.1-8B-Instruct`` or ``openai/gpt-4o`` are real model ids) accept a
*namespaced* id: such segments joined by single ``/`` (at most 8). That is the form
:class:`~aiecs_core.llm.ChatInput` and :class:`~aiecs_core.llm.EmbedInput` accept; a
provider that puts the model into a URL path (Vertex AI's Gemini) narrows it to one
segment with :func:`check_model_id` (``namespaced=False``) in its ``check_input``.

Refused everywhere: ``#``, ``%``, ``?``, ``\``, whitespace and control characters, a
``.`` or ``..`` segment, an empty segment (``a//b``, a leading or trailing ``/``).
"""

from __future__ import annotations

import re

from ..errors import InputValidationError

__all__ = [
    "MODEL_ID_PATTERN",
    "NAMESPACED_MODEL_ID_PATTERN",
    "check_model_id",
    "model_id_problem",
]

_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"
#: One segment: what a provider that puts the model into a URL path accepts.
MODEL_ID_PATTERN = rf"^{_SEGMENT}$"
#: Up to 8 segments joined by ``/``: what a provider sending the model in a body accepts.
NAMESPACED_MODEL_ID_PATTERN = rf"^{_SEGMENT}(?:/{_SEGMENT}){{0,7}}$"
_ONE = re.compile(_SEGMENT)
_PATH = re.compile(rf"{_SEGMENT}(?:/{_SEGMENT}){{0,7}}")
_MAX_SEGMENTS = 8
_ALLOWED = "letters, digits and . _ : @ - (1-128 characters, starting with a letter or digit)"


def model_id_problem(value: object, *, namespaced: bool = True) -> str | None:
    """Why ``value`` is not a model id (None when it is one)."""
    # The common case, one match (a segment starts with a letter or digit, so no '.' or
    # '..' segment matches); the rest only says what is wrong.
    if isinstance(value, str) and _PATH.fullmatch(value) and (namespaced or "/" not in value):
        return None
    if not isinstance(value, str):
        return "must be a string"
    bad = next((c for c in value if c in "#%?\\" or c.isspace() or not c.isprintable()), None)
    if bad is not None:
        return (f"contains {bad!r}: a model id is {_ALLOWED}; the project, location and "
                "endpoint come from the operator's settings")
    segments = value.split("/")
    dots = next((s for s in segments if s in (".", "..")), None)
    if dots is not None:
        return f"contains a {dots!r} path segment"
    if len(segments) > 1 and not namespaced:
        return (f"contains '/': this provider takes a model id ({_ALLOWED}), not a "
                "resource path; the project, location and endpoint come from the "
                "operator's settings")
    if len(segments) > _MAX_SEGMENTS:
        return f"has more than {_MAX_SEGMENTS} '/'-separated parts"
    for segment in segments:
        if not _ONE.fullmatch(segment):
            what = "an empty part" if not segment else repr(segment)
            return f"has {what}: each part of a model id is {_ALLOWED}"
    return None


def check_model_id(value: object, *, namespaced: bool = True, field: str = "model") -> str:
    """``value`` if it is a model id, else an :class:`InputValidationError` naming
    ``field`` and what is allowed (``namespaced=False``: one segment, no ``/``)."""
    problem = model_id_problem(value, namespaced=namespaced)
    if problem is not None:
        raise InputValidationError(f"{field}: {value!r} is not a model id: {problem}",
                                   field=field)
    return value  # type: ignore[return-value]
