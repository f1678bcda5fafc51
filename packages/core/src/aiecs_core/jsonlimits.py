"""Depth and size limits for untrusted JSON, checked without recursion.

``json.loads`` and ``json.dumps`` recurse once per nesting level: a 100,000-deep document
(100 KB of ``[``) raises ``RecursionError`` from deep inside the parser, which callers that
catch ``ValueError`` turn into a 500 and a logged traceback. Every input path checks
nesting *before* the recursive call, with the iterative functions here:

- :func:`text_depth` scans JSON text (``str`` or ``bytes``) for brackets outside strings;
- :func:`value_depth` walks decoded Python values (dicts, lists, tuples) with an explicit
  stack;
- :func:`loads` refuses text over ``max_bytes`` or deeper than ``max_depth``, then parses.

Both depth functions stop as soon as the limit is passed, so their cost is bounded by the
input's size, never by its nesting. Depth counts containers: ``1`` is 0, ``[]`` is 1,
``{"a": [1]}`` is 2.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

__all__ = [
    "MAX_JSON_DEPTH",
    "JsonDepthError",
    "JsonTooLargeError",
    "check_depth",
    "check_text_depth",
    "loads",
    "text_depth",
    "value_depth",
]

#: The nesting limit of every JSON input (HTTP bodies, Socket.IO messages, task arguments).
#: Real requests stay far below it (a chat request with tool schemas is about 10 deep).
MAX_JSON_DEPTH = 64

# A whole string literal (escapes included), a lone quote (an unterminated string), or a
# bracket. Matching strings whole keeps the scan at C speed inside long strings.
_TOKENS_STR = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{}]', re.S)
_TOKENS_BYTES = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|"|[\[\]{}]', re.S)
_OPEN = frozenset("[{") | frozenset(b"[{")
_CLOSE = frozenset("]}") | frozenset(b"]}")


class JsonDepthError(ValueError):
    """JSON nested deeper than the limit."""

    def __init__(self, limit: int, what: str = "JSON"):
        super().__init__(f"{what} is nested deeper than {limit} levels")
        self.limit = limit


class JsonTooLargeError(ValueError):
    """JSON text longer than the limit (checked before parsing)."""

    def __init__(self, size: int, limit: int, what: str = "JSON"):
        super().__init__(f"{what} is {size} bytes, over the limit of {limit}")
        self.size = size
        self.limit = limit


def text_depth(text: str | bytes | bytearray | memoryview, limit: int | None = None) -> int:
    """The deepest bracket nesting of JSON ``text``, ignoring brackets inside strings.

    With ``limit``, the scan stops at the first level past it and returns ``limit + 1``.
    Text that is not valid JSON still gets a number (its brackets' nesting up to where a
    string is left unterminated): the parser that runs next reports the syntax error.
    """
    if isinstance(text, memoryview):
        text = text.tobytes()
    matches: Iterator[re.Match[str]] | Iterator[re.Match[bytes]] = (
        _TOKENS_STR.finditer(text) if isinstance(text, str) else _TOKENS_BYTES.finditer(text))
    depth = deepest = 0
    for match in matches:
        token = match.group()
        first = token[0]
        if first in _OPEN:
            depth += 1
            if depth > deepest:
                deepest = depth
                if limit is not None and deepest > limit:
                    return deepest
        elif first in _CLOSE:
            depth -= 1
        elif len(token) == 1:  # a quote that opens a string never closed: nothing after
            break               # it can be parsed as structure
    return deepest


_CONTAINERS = (dict, list, tuple)


def value_depth(value: Any, limit: int | None = None) -> int:
    """The deepest container nesting of a decoded value (dicts, lists and tuples).

    Iterative; with ``limit`` it stops at the first container past it and returns
    ``limit + 1`` (a self-containing value therefore ends instead of looping).
    """
    if not isinstance(value, _CONTAINERS):
        return 0
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:  # only containers are stacked, in a plain loop (no generator per item)
        item, depth = stack.pop()
        if depth > deepest:
            deepest = depth
            if limit is not None and deepest > limit:
                return deepest
        depth += 1
        for child in (item.values() if isinstance(item, dict) else item):
            if isinstance(child, _CONTAINERS):
                stack.append((child, depth))
    return deepest


def check_depth(value: Any, limit: int = MAX_JSON_DEPTH, what: str = "value") -> None:
    """Raise :class:`JsonDepthError` when a decoded ``value`` nests deeper than ``limit``."""
    if value_depth(value, limit) > limit:
        raise JsonDepthError(limit, what)


def check_text_depth(text: str | bytes | bytearray, limit: int = MAX_JSON_DEPTH,
                     what: str = "JSON") -> None:
    """Raise :class:`JsonDepthError` when JSON ``text`` nests deeper than ``limit``."""
    opens = text.count("[") + text.count("{") if isinstance(text, str) else (
        text.count(b"[") + text.count(b"{"))
    if opens <= limit:  # fast path: not enough brackets to get that deep
        return
    if text_depth(text, limit) > limit:
        raise JsonDepthError(limit, what)


def loads(text: str | bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH,
          max_bytes: int | None = None, what: str = "JSON") -> Any:
    """``json.loads`` that cannot exhaust the stack or be handed unbounded input.

    Raises :class:`JsonTooLargeError` (size checked first, without parsing),
    :class:`JsonDepthError`, or the ``ValueError`` ``json.loads`` raises for invalid JSON
    (all three are ``ValueError``). A ``RecursionError`` left anyway (a caller already deep
    in its own stack) is reported as a ``JsonDepthError`` too.
    """
    if max_bytes is not None:
        size = len(text.encode()) if isinstance(text, str) else len(text)
        if size > max_bytes:
            raise JsonTooLargeError(size, max_bytes, what)
    check_text_depth(text, max_depth, what)
    try:
        return json.loads(text)
    except RecursionError:
        raise JsonDepthError(max_depth, what) from None
