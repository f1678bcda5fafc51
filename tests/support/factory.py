"""The body of the tests' process-factory fixtures (``start_worker``, ``start_beat``,
``start_server``): start processes on demand, stop every one after the test and print
the tail of its log (pytest shows it only when the test failed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
    for proc in started:
        proc.stop()
        print(f"--- log of {describe(proc)} (last {lines} lines) ---")
        print("\n".join(proc.log().splitlines()[-lines:]))
        cleanup(proc)
