"""Forgetting a user: their rows, payloads and event logs in the history database, and
what Redis still holds of their ended executions (states, event logs). One function for
``aiecs forget USER`` and ``DELETE /users/{user}/history``.

The database goes first: when Redis is unreachable the rows are gone and a second run
removes the rest. Entries of the user still waiting in the outbox (executions that ended
moments ago) are recorded afterwards: forget a user once their work has stopped, or run
it again.
"""

from __future__ import annotations

from typing import Any

from ..store.forget import forget_user

__all__ = ["forget"]


def forget(engine: Any, redis_client: Any, user_id: str) -> dict[str, Any]:
    """Delete ``user_id``'s history; what was deleted, per store."""
    from aiecs_history import queries  # deferred: a worker-only install has no history

    return {"user_id": user_id, "database": queries.forget(engine, user_id),
            "redis": forget_user(redis_client, user_id)}
