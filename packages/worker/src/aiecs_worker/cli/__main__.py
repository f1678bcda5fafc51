"""``python -m aiecs_worker.cli``: the ``aiecs`` command."""

from . import main

main()
