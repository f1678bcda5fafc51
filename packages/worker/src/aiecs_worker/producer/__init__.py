"""Layer 3, the producer: what any process may call (the HTTP API, the CLI, scripts,
the workers themselves): submit (``control``), cancel, read states, release held
executions (``release``), batches, workflows (DAGs of steps of one task_id, ``flow`` and
``advance``) and schedules, all built from ordinary executions. Imports the app, the
store and the foundation; never the runner, the server or the CLI.

See the README, "Workflows", docs/workflows.md and docs/architecture.md.
"""
