"""The producer keeps the template versions it read (immutable) and their compiled
variables validators; a label is still read at every submission, so a move takes effect
at once."""

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
