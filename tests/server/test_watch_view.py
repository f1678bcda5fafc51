"""How ``aiecs watch`` renders events off a terminal: streamed text as text, retries in
words, a scheduled execution's time (the renderer fed the events a real task sends)."""

from __future__ import annotations

import io

from aiecs_worker.cli.watching import WatchView
from rich.console import Console


def _render(events: list[dict], final: dict) -> tuple[str, int]:
    out = io.StringIO()
    view = WatchView(Console(file=out, force_terminal=False, width=200), "t1")
    with view:
        for event in events:
            view.on_event({"step": 1, **event})
    code = view.finish(final)
    return out.getvalue(), code


def test_plain_rendering():
    text, code = _render([
        {"type": "status", "status": "pending", "message": "scheduled for 2026-12-06T09:00:00Z"},
        {"type": "status", "status": "running", "message": "started"},
        {"type": "progress", "progress": None,
         "message": "retrying in 0.52s after RateLimitError (attempt 2 of 4)"},
        {"type": "progress", "progress": 0.1, "message": "thinking"},
        {"type": "stream", "delta": "Hel"},
        {"type": "stream", "delta": "lo,\nwor"},
        {"type": "progress", "progress": 0.5, "message": "chunk 2/3"},  # the text shows it
        {"type": "stream", "delta": "ld"},
        {"type": "status", "status": "completed", "message": "completed"},
    ], {"status": "completed", "step": 1, "result": {"text": "Hello,\nworld"}})
    assert code == 0
    assert text.splitlines() == [
        "status: pending (step 1): scheduled for 2026-12-06T09:00:00Z",
        "status: running (step 1)",
        "progress: retrying in 0.52s after RateLimitError (attempt 2 of 4)",
        "progress: 10% thinking",
        "Hello,",
        "world",
        "status: completed (step 1)",
        "{",
        '  "text": "Hello,\\nworld"',
        "}",
        "COMPLETED task t1 step 1",
    ]


def test_text_cut_by_the_end_ends_its_line():
    text, code = _render([{"type": "status", "status": "running"},
                          {"type": "stream", "delta": "partial"}],
                         {"status": "failed", "step": 1,
                          "error": {"type": "ProviderError", "message": "gone"}})
    assert code == 1
    assert text.splitlines()[-2:] == ["partial", "FAILED task t1 step 1: ProviderError: gone"]
