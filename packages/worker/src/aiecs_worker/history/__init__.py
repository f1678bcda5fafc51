"""The worker side of the history database (:mod:`aiecs_history`): what the server, the
CLI and the recorder need from it, above the Redis layers (store/, app) and below the
server and the CLI. ``aiecs_history`` is imported lazily where a worker-only install (no
``history`` extra) might run the code."""
