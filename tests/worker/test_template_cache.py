"""The producer keeps the template versions it read (immutable) and their compiled
variables validators, and what a label pointed at for at most AIECS_TEMPLATE_LABEL_TTL
seconds: a move made through this process takes effect at its next submission, one made
elsewhere within that bound (0: at once)."""

from __future__ import annotations

import pytest

from tests.server.test_templates import GREET


@pytest.fixture
def sqlite_history(tmp_path, submitter_env):
    from aiecs_worker.history import engine as engines

    submitter_env(AIECS_DATABASE_URL=f"sqlite:///{tmp_path}/history.db")
    yield engines.engine()
    engines.dispose()


def test_a_label_move_is_seen_by_the_next_submission_and_a_kept_version_renders_the_same(
        sqlite_history):
    from aiecs_history import templates as store
    from aiecs_worker.history.templates import expand

    store.publish(sqlite_history, "greet", GREET)
    store.publish(sqlite_history, "greet", {**GREET, "input": {**GREET["input"],
                                                                "text": "v2 {{who}}"}})
    store.move_label(sqlite_history, "greet", "production", 1, expected_version=None)
    sub = {"user_id": "u", "task_id": "t", "step": 1,
           "template": {"name": "greet", "label": "production"}, "variables": {"who": "a"}}
    first = expand(sub)
    assert first["input_data"]["text"] == "v1 a"
    assert expand(sub) == first  # version 1 now kept: renders the same
    store.move_label(sqlite_history, "greet", "production", 2, expected_version=1)
    moved = expand(sub)
    assert moved["template"] == {"name": "greet", "version": 2}
    assert moved["input_data"]["text"] == "v2 a"
    pinned = expand({**sub, "template": {"name": "greet", "version": 1}})
    assert pinned == first


def test_the_variables_validator_is_compiled_once_per_schema_and_still_refuses(
        sqlite_history):
    from aiecs_history import rendering
    from aiecs_history import templates as store
    from aiecs_history.errors import TemplateVariablesError
    from aiecs_worker.history.templates import expand

    store.publish(sqlite_history, "greet-once", GREET)
    store.move_label(sqlite_history, "greet-once", "production", 1, expected_version=None)
    rendering._validator.cache_clear()
    sub = {"user_id": "u", "task_id": "t", "step": 1,
           "template": {"name": "greet-once"}, "variables": {"who": "b"}}
    for _ in range(3):
        assert expand(sub)["input_data"]["text"] == "v1 b"
    with pytest.raises(TemplateVariablesError, match="variable who: .* is too long"):
        expand({**sub, "variables": {"who": "x" * 41}})
    assert rendering._validator.cache_info().misses == 1


def _move_elsewhere(engine, name: str, version: int) -> None:
    """Point ``production`` at ``version`` as another process would: in the database,
    without this process's move_label (which this process's label cache would see)."""
    from aiecs_history.tables import template_labels, templates
    from sqlalchemy import select, update

    with engine.begin() as conn:
        tid = conn.execute(select(templates.c.id).where(templates.c.name == name)).scalar()
        conn.execute(update(template_labels).where(template_labels.c.template_id == tid)
                     .values(version=version))


def test_a_label_is_read_again_after_the_ttl_or_a_move_made_here(sqlite_history,
                                                                  submitter_env, monkeypatch):
    from aiecs_history import templates as store
    from aiecs_history.errors import LabelConflictError
    from aiecs_worker.history import templates as resolving

    submitter_env(AIECS_TEMPLATE_LABEL_TTL="2")
    clock = [1000.0]
    monkeypatch.setattr(resolving, "_now", lambda: clock[0])
    store.publish(sqlite_history, "greet-ttl", GREET)
    store.publish(sqlite_history, "greet-ttl", {**GREET, "input": {**GREET["input"],
                                                                    "text": "v2 {{who}}"}})
    store.move_label(sqlite_history, "greet-ttl", "production", 1, expected_version=None)
    sub = {"user_id": "u", "task_id": "t", "step": 1,
           "template": {"name": "greet-ttl", "label": "production"}, "variables": {"who": "a"}}

    def version() -> int:
        return resolving.expand(sub)["template"]["version"]

    assert version() == 1
    _move_elsewhere(sqlite_history, "greet-ttl", 2)
    clock[0] += 1.9
    assert version() == 1  # kept: read 1.9 s ago, within the 2 s bound
    clock[0] += 0.1
    assert version() == 2  # 2 s: read again
    _move_elsewhere(sqlite_history, "greet-ttl", 1)
    assert version() == 2  # kept (the clock stands still)
    # a move made here, even a refused one, is seen at the next submission
    with pytest.raises(LabelConflictError):
        store.move_label(sqlite_history, "greet-ttl", "production", 2, expected_version=2)
    assert version() == 1
    store.move_label(sqlite_history, "greet-ttl", "production", 2, expected_version=1)
    assert version() == 2


def test_with_ttl_0_a_label_moved_elsewhere_is_seen_at_once(sqlite_history, submitter_env):
    from aiecs_history import templates as store
    from aiecs_worker.history.templates import expand

    submitter_env(AIECS_TEMPLATE_LABEL_TTL="0")
    store.publish(sqlite_history, "greet-now", GREET)
    store.publish(sqlite_history, "greet-now", {**GREET, "input": {**GREET["input"],
                                                                    "text": "v2 {{who}}"}})
    store.move_label(sqlite_history, "greet-now", "production", 1, expected_version=None)
    sub = {"user_id": "u", "task_id": "t", "step": 1,
           "template": {"name": "greet-now", "label": "production"}, "variables": {"who": "a"}}
    assert expand(sub)["input_data"]["text"] == "v1 a"
    _move_elsewhere(sqlite_history, "greet-now", 2)
    assert expand(sub)["input_data"]["text"] == "v2 a"
