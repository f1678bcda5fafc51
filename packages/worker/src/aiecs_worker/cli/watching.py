"""Following a task live and rendering its events in the terminal: what ``aiecs watch``,
``submit --watch``, ``batch watch`` and ``workflow submit --watch`` do."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from .client import TaskWatcher, WatchError
from .common import EXIT_CODES, EXIT_WATCH_ERROR

__all__ = ["WatchView", "run_watch"]


def run_watch(url: str, tok: str, task_id: str, step: int | None, after_seq: int,
              timeout: float | None, all_steps: frozenset[int] | None = None) -> int:
    """Follow ``task_id`` (``step``, or every step in ``all_steps``) until it ends; the
    exit code of its final status (:data:`.common.EXIT_CODES`)."""
    # rich is imported when used: it would slow every `aiecs` command's start
    from rich.console import Console

    console = Console(highlight=False)
    view = WatchView(console, task_id)
    watcher = TaskWatcher(url, tok, task_id, view.on_event, step=step, after_seq=after_seq,
                          all_steps=all_steps)
    try:
        with view:
            final = asyncio.run(watcher.run(timeout))
    except WatchError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_WATCH_ERROR
    except KeyboardInterrupt:
        console.print("interrupted (the task goes on)")
        return 130
    if all_steps:
        view.finish_quietly()
        return 0
    return view.finish(final)


class WatchView:
    """Renders events: on a terminal, a live panel (the streamed text's tail above a rich
    progress bar), the full text printed at the end; otherwise plain lines (``status: ...``,
    ``progress: ...``), the streamed text written as text as it arrives (progress lines stop
    once text streams: the text is the progress), on lines of its own."""

    TAIL_LINES = 15

    def __init__(self, console, task_id: str):
        self.console = console
        self.task_id = task_id
        self.interactive = console.is_terminal
        self.text = ""
        self.step: int | None = None
        self.progress = None
        self.bar = None
        self.live = None
        self._open_line = False  # streamed text written without its final newline yet

    def __enter__(self):
        if self.interactive:
            from rich.live import Live  # deferred: see run_watch
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

            self.progress = Progress(
                TextColumn("[bold]{task.fields[label]}"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[status]} {task.fields[message]}"),
                console=self.console,
            )
            self.bar = self.progress.add_task("", total=1.0, label=self.task_id,
                                              status="connecting", message="")
            self.live = Live(self._render(), console=self.console, refresh_per_second=10,
                             transient=True)
            self.live.start()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.stop()
        return False

    def _render(self):
        from rich.console import Group  # deferred: see run_watch
        from rich.text import Text

        tail = "\n".join(self.text.splitlines()[-self.TAIL_LINES:])
        return Group(Text(tail), self.progress) if tail else self.progress

    def on_event(self, event: dict[str, Any]) -> None:
        step, kind, status = event.get("step"), event.get("type"), event.get("status")
        if step != self.step:
            self.step = step
            self.text = ""
        if kind == "status" and status == "running" and self.text:
            # redelivered after a worker was lost: the output starts over
            self.text = ""
            self._line(f"restarted (step {step}): output starts over")
        message = event.get("message") or ""
        if kind == "stream" and event.get("delta"):
            self.text += event["delta"]
            if not self.interactive:
                self._write(event["delta"])
        elif kind == "progress":
            fraction = event.get("progress")
            known = isinstance(fraction, int | float)
            if self.bar is not None:
                self.progress.update(self.bar, message=message,
                                     **({"completed": fraction} if known else {}))
            elif not self.text:  # once text streams, the text is the progress
                # a retry has a message and no fraction: the words alone
                pct = f"{fraction * 100:.0f}% " if isinstance(fraction, int | float) else ""
                self._line(f"progress: {pct}{message}".rstrip())
        elif kind == "status":
            if self.bar is not None:
                done = {"completed": 1.0}.get(status)
                self.progress.update(self.bar, status=status, label=f"{self.task_id}/{step}",
                                     message=message,
                                     **({"completed": done} if done is not None else {}))
            else:
                # "scheduled for ..." on a PENDING countdown/eta execution (the plain
                # "queued"/"started" say nothing more; a terminal one's reason is on the
                # final line)
                said = status in ("pending", "running") and message not in (
                    "", "queued", "started")
                self._line(f"status: {status} (step {step})" + (f": {message}" if said
                                                                  else ""))
        if self.live is not None:
            self.live.update(self._render())

    def _write(self, text: str) -> None:
        """Streamed text, as it is (no newline added)."""
        self.console.print(text, markup=False, highlight=False, soft_wrap=True, end="")
        self.console.file.flush()
        self._open_line = not text.endswith("\n")

    def _line(self, text: str) -> None:
        if self._open_line:  # the streamed text ends its line first
            self.console.print()
            self._open_line = False
        if self.interactive:
            self.console.print(text, markup=False, highlight=False)
        else:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def finish_quietly(self) -> None:
        if self._open_line:
            self.console.print()
            self._open_line = False
        if self.live is not None:
            self.live.stop()
            self.live = None

    def finish(self, final: dict[str, Any]) -> int:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self._open_line:
            self.console.print()
            self._open_line = False
        status = final.get("status", "")
        if self.interactive and self.text:
            self.console.print(self.text, markup=False, highlight=False, soft_wrap=True)
        if status == "completed":
            result = final.get("result")
            if result is not None:
                self.console.print(json.dumps(result, indent=2, ensure_ascii=False),
                                   markup=False, highlight=False, soft_wrap=True)
            self.console.print(f"[green]COMPLETED[/green] task {self.task_id} step "
                               f"{final.get('step')}")
        else:
            err = final.get("error") or {}
            reason = f": {err.get('type')}: {err.get('message')}" if err else ""
            self.console.print(f"[red]{status.upper()}[/red] task {self.task_id} step "
                               f"{final.get('step')}", highlight=False, end="")
            self.console.print(reason, markup=False, highlight=False, soft_wrap=True)
        return EXIT_CODES.get(status, 1)
