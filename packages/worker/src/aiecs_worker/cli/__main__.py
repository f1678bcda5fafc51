"""``python -m aiecs_worker.cli``: the ``aiecs`` command (its console entry point, so a bad
setting is one line here too)."""

from ..console import main

main()
