"""Secrets never leave the worker: the one redaction step.

Everything a worker sends out (error messages and details, events, results, stored
state, log records) passes through :func:`redact` (text), :func:`redact_data` (JSON-like
values) or :func:`redact_json` (JSON text). Each removes

- every **registered secret**, exactly, wherever it appears (also in its JSON-escaped and
  URL-encoded forms): the values of the environment variables a service declares in
  ``Service.secret_env`` (registered when its plugin is registered and when it is
  instantiated), of variables named like secrets (``*_API_KEY``, ``*_SECRET_KEY``,
  ``*_SECRET``, ``*_TOKEN``, ``*_PASSWORD``, registered by the worker at start), and
  whatever a provider hands to :func:`register_secret` (a key it was given, an OAuth
  token it obtained);
- anything **shaped like a credential**: ``sk-...``/``xai-...`` API keys, Google
  ``AIza...`` keys and ``ya29....`` access tokens, signed JWTs (``eyJ....eyJ....``: the
  self-signed tokens Google's SDKs send for service accounts), and the token after
  ``Bearer``.

Where it is applied (so that call sites need not remember to):

- :class:`aiecs_core.AiecsError` redacts its message and details when it is built, so a
  provider's converted error (a request id echoing the key, a server message, a body)
  is clean before anyone sees it;
- the worker redacts every event JSON and terminal state it writes to Redis, and what it
  hands to Celery's result backend;
- :class:`RedactingFilter`, installed on the worker's and the progress server's log
  handlers, redacts every record (message, arguments, traceback), including the DEBUG
  logs of httpx, httpcore and the provider SDKs, which print headers.

Pure stdlib: no import of the rest of aiecs_core.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "SECRET_ENV_SUFFIXES",
    "RedactingFilter",
    "forget_secrets",
    "install_log_redaction",
    "redact",
    "redact_data",
    "redact_json",
    "register_env_secrets",
    "register_secret",
    "registered_secrets",
]

#: What a secret is replaced with.
REDACTED = "[redacted]"
#: Shorter values are never registered (they would redact ordinary words).
MIN_SECRET_LENGTH = 8
#: Environment variables whose names end like this hold secrets (:func:`register_env_secrets`).
SECRET_ENV_SUFFIXES = ("_API_KEY", "_SECRET_KEY", "_SECRET", "_TOKEN", "_PASSWORD")

def _shape(prefix: str, rest: str) -> re.Pattern[str]:
    """A credential: the literal ``prefix`` (not preceded by a letter, digit or
    underscore), then ``rest``. The literal comes first so that the regex engine scans for
    it fast: most text has none."""
    return re.compile(f"{re.escape(prefix)}(?<![A-Za-z0-9_]{re.escape(prefix)}){rest}")


#: (substring tested first, regex, replacement) of every credential shape.
_SHAPES: tuple[tuple[str, re.Pattern[str], str], ...] = (
    # Authorization: Bearer <token> (the scheme is kept: "Bearer [redacted]")
    ("earer", re.compile(r"earer(?<=[Bb]earer)(?<![A-Za-z0-9_][Bb]earer)(\s+)"
                         r"[A-Za-z0-9._~+/-]{8,}=*"), rf"earer\g<1>{REDACTED}"),
    ("sk", _shape("sk", r"[-_][A-Za-z0-9_-]{8,}"), REDACTED),  # OpenAI: sk-, sk-proj-
    ("xai", _shape("xai", r"[-_][A-Za-z0-9_-]{8,}"), REDACTED),  # xAI
    ("AIza", _shape("AIza", r"[0-9A-Za-z_-]{8,}"), REDACTED),  # Google API keys
    ("ya29.", _shape("ya29.", r"[0-9A-Za-z_.-]{8,}"), REDACTED),  # Google OAuth tokens
    # JWTs (header.payload.signature, both JSON objects: "eyJ"): bearer credentials, e.g.
    # the self-signed tokens google-auth makes for service accounts
    ("eyJ", _shape("eyJ", r"[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{8,}"),
     REDACTED),
)

_lock = threading.Lock()
_secrets: set[str] = set()
#: The forms of the registered secrets (fast substring tests) and a regex removing them.
_forms: tuple[str, ...] = ()
_secret_re: re.Pattern[str] | None = None


def _variants(secret: str) -> set[str]:
    """The forms a secret takes in text: as is, JSON-escaped, URL-encoded."""
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        urllib.parse.quote(secret, safe=""),
    }


def _compile(secrets: Iterable[str]) -> tuple[tuple[str, ...], re.Pattern[str] | None]:
    # longest first: a secret that contains another is removed whole
    forms = tuple(sorted({v for s in secrets for v in _variants(s)},
                         key=lambda f: (-len(f), f)))
    if not forms:
        return (), None
    return forms, re.compile("|".join(re.escape(f) for f in forms))


def register_secret(value: str | None) -> bool:
    """Remember ``value`` as a secret: from now on it is redacted wherever it appears.

    Blank values and values shorter than :data:`MIN_SECRET_LENGTH` are ignored (returns
    False). Safe to call often (from any thread): registering a known secret costs a set
    lookup.
    """
    global _forms, _secret_re
    if not isinstance(value, str):
        return False
    value = value.strip()
    if len(value) < MIN_SECRET_LENGTH or value in REDACTED:
        return False
    if value in _secrets:
        return True
    with _lock:
        if value not in _secrets:
            _secrets.add(value)
            _forms, _secret_re = _compile(_secrets)
    return True


def register_env_secrets(
    names: Iterable[str] | None = None, environ: Mapping[str, str] | None = None
) -> list[str]:
    """Register the values of the environment variables ``names`` (None: every variable
    named like a secret, see :data:`SECRET_ENV_SUFFIXES`). Returns the names registered."""
    env = os.environ if environ is None else environ
    if names is None:
        names = [n for n in env if n.upper().endswith(SECRET_ENV_SUFFIXES)]
    return [name for name in names if register_secret(env.get(name))]


def registered_secrets() -> frozenset[str]:
    """The registered secrets (for tests and diagnostics; never log them)."""
    return frozenset(_secrets)


def forget_secrets() -> None:
    """Forget every registered secret (tests)."""
    global _forms, _secret_re
    with _lock:
        _secrets.clear()
        _forms, _secret_re = (), None


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without the registered secrets, the given ``secrets`` and anything shaped
    like an API key or bearer token."""
    if not isinstance(text, str) or not text:
        return text
    extra = [s for s in secrets if isinstance(s, str) and len(s) >= 4 and s not in _secrets]
    if extra:
        for secret in sorted(extra, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
    forms, pattern = _forms, _secret_re
    if pattern is not None and any(f in text for f in forms):
        text = pattern.sub(REDACTED, text)
    for hint, shape, replacement in _SHAPES:
        if hint in text:
            text = shape.sub(replacement, text)
    return text


def _needs_redaction(text: str) -> bool:
    """Whether ``text`` may hold something to redact (substring tests: fast on the hot
    path, where almost nothing does)."""
    if any(f in text for f in _forms):
        return True
    return any(hint in text and shape.search(text) for hint, shape, _ in _SHAPES)


def redact_data(value: Any) -> Any:
    """A JSON-like value (dicts, lists, tuples, strings, scalars) with every string, keys
    included, redacted. Other values are returned as they are.

    A container is first tested whole: its strings joined by NUL, one substring scan for
    every secret form and credential hint (and a regex search where a hint is found).
    Every match inside one of the strings is a match in the joined text (the shapes'
    lookbehinds exclude a NUL as they exclude the text's start), so a joined text with
    nothing to redact means no string has: the value is copied without testing each
    string (a chat task's result: 27 → 19 µs, docs/performance.md). Otherwise each string
    is redacted."""
    if isinstance(value, Mapping | list | tuple):
        found: list[str] = []
        _strings(value, found)
        if not _needs_redaction("\x00".join(found)):
            return _rebuilt(value, _same)  # a copy, nothing to redact
    return _rebuilt(value, redact)


def _strings(value: Any, out: list[str]) -> None:
    """Every string :func:`_rebuilt` would pass to its ``leaf`` in ``value``, keys included."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _strings(k, out)
            _strings(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            _strings(v, out)


def _same(text: str) -> str:
    return text


def _rebuilt(value: Any, leaf: Callable[[str], str]) -> Any:
    """``value`` rebuilt (dicts, lists, tuples copied) with ``leaf`` of every string."""
    if isinstance(value, str):
        return leaf(value)
    if isinstance(value, Mapping):
        return {_rebuilt(k, leaf): _rebuilt(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [_rebuilt(v, leaf) for v in value]
    if isinstance(value, tuple):
        return tuple(_rebuilt(v, leaf) for v in value)
    return value


def redact_json(text: str) -> str:
    """JSON text with every string in it redacted, still valid JSON (compact, as pydantic
    writes it). Text with nothing to redact is returned unchanged, without parsing."""
    if not isinstance(text, str) or not _needs_redaction(text):
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return redact(text)
    return json.dumps(redact_data(value), ensure_ascii=False, separators=(",", ":"))


# --- logging ---------------------------------------------------------------------------------

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


#: Characters of a websocket frame's payload a log line shows (as websockets does).
_FRAME_LOG_SIZE = 75


def _is_frame(value: Any) -> bool:
    """A websocket frame object (``websockets.frames.Frame``), duck-typed."""
    return hasattr(value, "opcode") and isinstance(getattr(value, "data", None),
                                                   bytes | bytearray | memoryview)


def _frame_text(frame: Any) -> str:
    """A websocket frame as websockets logs it at DEBUG (``< TEXT '...' [N bytes]``), but
    with its whole payload redacted *before* it is elided: websockets' own rendering
    elides first, keeping a token's start and the end of its signature, which no
    pattern recognises any more."""
    data = bytes(frame.data)
    name = getattr(frame.opcode, "name", str(frame.opcode))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"{name} <{len(data)} bytes of binary data> [{len(data)} bytes]"
    text = redact(text)
    if len(text) > _FRAME_LOG_SIZE:
        head = _FRAME_LOG_SIZE * 2 // 3
        text = text[:head] + "..." + text[head - _FRAME_LOG_SIZE:]
    return f"{name} {text!r} [{len(data)} bytes]"


class RedactingFilter(logging.Filter):
    """Redacts a log record in place: its message (formatted with its arguments), its
    traceback and stack text, and any extra string attribute. Never drops a record.
    Websocket frames among the arguments (websockets' and uvicorn's DEBUG frame log) are
    rendered with their payload redacted whole, then elided.

    Install it on handlers (a filter on a logger does not see its children's records):
    :func:`install_log_redaction`.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the record's message and arguments; always keep the record."""
        if isinstance(record.args, tuple) and any(_is_frame(a) for a in record.args):
            with contextlib.suppress(Exception):
                record.args = tuple(_frame_text(a) if _is_frame(a) else a
                                    for a in record.args)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format: the handler reports it
            return True
        clean = redact(message)
        if clean != message:
            # Keep the record's (msg, args) shape when redacting the arguments one by one
            # is enough: formatters such as uvicorn's access-log one unpack record.args.
            args = record.args
            if isinstance(args, tuple) and isinstance(record.msg, str):
                record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
                record.msg = redact(record.msg)
                with contextlib.suppress(Exception):
                    if record.getMessage() == clean:
                        args = None
            if args is not None or record.getMessage() != clean:
                record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            with contextlib.suppress(Exception):
                record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and isinstance(value, str):
                record.__dict__[key] = redact(value)
        return True


_FILTER = RedactingFilter()


def install_log_redaction(*loggers: logging.Logger | str) -> int:
    """Add the redacting filter to every handler of the root logger, of ``loggers`` and of
    every logger that exists now (handlers added later need another call). Returns how
    many handlers got it (each gets it once)."""
    targets: list[logging.Logger] = [logging.getLogger()]
    targets += [logging.getLogger(x) if isinstance(x, str) else x for x in loggers]
    targets += [
        lg for lg in list(logging.Logger.manager.loggerDict.values())
        if isinstance(lg, logging.Logger)
    ]
    added = 0
    for logger in targets:
        for handler in list(logger.handlers):
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(_FILTER)
                added += 1
    return added
