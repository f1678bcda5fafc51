"""Batches and workflows (DAGs of steps of one task_id) built from ordinary executions.

See the README, "Workflows", and docs/workflows.md.
"""
