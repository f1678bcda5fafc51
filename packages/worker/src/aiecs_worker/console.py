"""The ``aiecs`` command's entry point: the CLI when the ``[server]`` extra is installed.

A worker-only install (``pip install aiecs-worker``) has no server and CLI stack; there the
command says which extra to install instead of failing with an ImportError.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["EXTRA_MODULES", "main", "missing_modules"]

#: The modules of the ``[server]`` extra (distribution name in brackets when it differs).
EXTRA_MODULES = {"click": "click", "rich": "rich", "starlette": "starlette",
                 "uvicorn": "uvicorn", "jwt": "pyjwt"}

HINT = ("the aiecs command needs the server extra, not installed here (missing: {missing}); "
        "install it with: pip install 'aiecs-worker[server]' (or 'aiecs-worker[dev]' for "
        "`aiecs dev`). A worker alone runs with: celery -A aiecs_worker worker")


def missing_modules() -> list[str]:
    """The distributions of the ``[server]`` extra that are not installed."""
    return [dist for module, dist in EXTRA_MODULES.items()
            if importlib.util.find_spec(module) is None]


def main() -> None:
    """Run the ``aiecs`` command, or exit 2 naming the extra to install."""
    missing = missing_modules()
    if missing:
        print(f"aiecs: {HINT.format(missing=', '.join(missing))}", file=sys.stderr)
        raise SystemExit(2)
    from aiecs_core import ConfigurationError

    try:
        from .cli import main as cli  # click and the CLI, once the extra is known present

        cli()
    except ConfigurationError as exc:  # one line naming the variable and the fix
        print(f"aiecs: {exc.message}", file=sys.stderr)
        raise SystemExit(2) from None
