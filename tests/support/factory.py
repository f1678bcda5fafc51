"""The body of the tests' process-factory fixtures (``start_worker``, ``start_beat``,
``start_server``): start processes on demand, stop every one after the test and print
the tail of its log (pytest shows it only when the test failed). With
``AIECS_TEST_LOG_DIR`` set, every process's whole log is kept there."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def process_factory(make: Callable[..., Any], describe: Callable[[Any], str], lines: int,
                    cleanup: Callable[[Any], None]) -> Iterator[Callable[..., Any]]:
    """``yield from`` this in a fixture. ``make(**kwargs)`` builds a process object with
    ``start()``, ``stop()`` and ``log()``; ``cleanup`` runs after it stopped."""
    started: list[Any] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        proc = make(*args, **kwargs)
        started.append(proc)
        return proc.start()

    yield start
    for index, proc in enumerate(started):
        proc.stop()
        print(f"--- log of {describe(proc)} (last {lines} lines) ---")
        text = proc.log()
        print("\n".join(text.splitlines()[-lines:]))
        keep = os.environ.get("AIECS_TEST_LOG_DIR")  # the whole log, for a post-mortem
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", describe(proc))
            Path(keep, f"{os.getpid()}-{index}-{name}.log").write_text(text)
        cleanup(proc)
