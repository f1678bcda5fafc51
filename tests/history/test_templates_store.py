"""The templates store on SQLite and a real PostgreSQL: versions numbered and immutable,
identical content deduplicated, labels moved by compare-and-swap only (one of two
concurrent movers wins), every move recorded; publishers racing for the next number."""

from __future__ import annotations

import threading

import pytest
from aiecs_history import db
from aiecs_history import templates as store
from aiecs_history.errors import (
    InvalidTemplateError,
    LabelConflictError,
    TemplateNotFoundError,
    TemplateVariablesError,
)
from aiecs_history.rendering import TemplateContent, render

SUMMARIZE = {
    "mode": "llm", "service": "openai", "operation": "chat",
    "input": {"messages": [{"role": "system", "content": "Summarize in {{words}} words."},
                           {"role": "user", "content": "{{text}}"}]},
    "variables_schema": {"type": "object", "properties": {
        "text": {"type": "string", "minLength": 1},
        "words": {"type": "integer", "minimum": 1, "default": 50}},
        "required": ["text"]},
    "defaults": {"model": "gpt-4o-mini", "parameters": {"temperature": 0.2}},
    "description": "summarize a text",
}


@pytest.fixture
def engine(database_url):
    eng = db.connect(database_url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


def _v2(**change):
    return {**SUMMARIZE, **change}


def test_publish_numbers_versions_and_dedupes_identical_content(engine):
    v1, created = store.publish(engine, "summarize", SUMMARIZE, created_by="ops")
    assert (v1.version, created) == (1, True)
    again, created = store.publish(engine, "summarize", dict(SUMMARIZE))
    assert (again.version, created, again.content_hash) == (1, False, v1.content_hash)
    v2, created = store.publish(engine, "summarize", _v2(description="shorter"))
    assert (v2.version, created) == (2, True)
    # versions are immutable: version 1 still reads as published
    assert store.get_version(engine, "summarize", 1).content.description == "summarize a text"
    # the same content again, after another version, is still version 1
    assert store.publish(engine, "summarize", SUMMARIZE)[0].version == 1
    info = store.describe(engine, "summarize")
    assert [v["version"] for v in info["versions"]] == [2, 1]
    assert store.list_templates(engine)[0]["latest_version"] == 2
    with pytest.raises(TemplateNotFoundError, match="no version 9"):
        store.get_version(engine, "summarize", 9)
    with pytest.raises(TemplateNotFoundError, match="no template 'nope'"):
        store.resolve(engine, "nope", label="production")


def test_invalid_templates_are_refused(engine):
    with pytest.raises(InvalidTemplateError, match="not a valid JSON Schema"):
        store.publish(engine, "bad", _v2(variables_schema={"type": "nonsense"}))
    with pytest.raises(InvalidTemplateError, match="does not declare in properties: lang"):
        store.publish(engine, "bad", _v2(input={"messages": [
            {"role": "user", "content": "{{text}} in {{lang}}"}]}))
    with pytest.raises(InvalidTemplateError, match="invalid template name"):
        store.publish(engine, "a:b", SUMMARIZE)
    assert store.list_templates(engine) == []


def test_labels_move_by_compare_and_swap_with_history(engine):
    store.publish(engine, "summarize", SUMMARIZE)
    store.publish(engine, "summarize", _v2(description="v2"))
    store.move_label(engine, "summarize", "production", 1, expected_version=None,
                     moved_by="alice")
    assert store.resolve(engine, "summarize").version == 1  # production by default
    with pytest.raises(LabelConflictError, match="points at version 1") as exc:
        store.move_label(engine, "summarize", "production", 2, expected_version=None)
    assert exc.value.current_version == 1
    with pytest.raises(LabelConflictError):
        store.move_label(engine, "summarize", "production", 2, expected_version=2)
    store.move_label(engine, "summarize", "production", 2, expected_version=1, moved_by="bob")
    assert store.resolve(engine, "summarize", label="production").version == 2
    with pytest.raises(TemplateNotFoundError, match="no version 7"):
        store.move_label(engine, "summarize", "production", 7, expected_version=2)
    history = store.label_history(engine, "summarize", "production")
    assert [(h["from_version"], h["to_version"], h["moved_by"]) for h in history] == [
        (1, 2, "bob"), (None, 1, "alice")]
    assert store.describe(engine, "summarize")["labels"] == {"production": 2}


def test_concurrent_label_movers_one_wins(engine):
    store.publish(engine, "summarize", SUMMARIZE)
    for i in range(2, 10):
        store.publish(engine, "summarize", _v2(description=f"v{i}"))
    store.move_label(engine, "summarize", "production", 1, expected_version=None)
    wins, conflicts, barrier = [], [], threading.Barrier(8)

    def mover(target: int) -> None:
        barrier.wait()
        try:
            store.move_label(engine, "summarize", "production", target, expected_version=1)
            wins.append(target)
        except LabelConflictError:
            conflicts.append(target)

    # each mover moves the label away from 1 (a "move" to 1 itself would leave it at 1,
    # and the next mover expecting 1 would rightly succeed too)
    threads = [threading.Thread(target=mover, args=(v,)) for v in range(2, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(wins) == 1 and len(conflicts) == 7
    assert store.resolve(engine, "summarize").version == wins[0]
    assert len(store.label_history(engine, "summarize", "production")) == 2


def test_racing_publishers_get_distinct_numbers_or_the_identical_version(engine):
    store.publish(engine, "summarize", SUMMARIZE)
    barrier = threading.Barrier(8)
    got: list[tuple[int, bool, str]] = []
    errors: list[BaseException] = []

    def publisher(i: int) -> None:
        barrier.wait()
        try:  # pairs of publishers send identical content
            v, created = store.publish(engine, "summarize", _v2(description=f"d{i // 2}"))
            got.append((v.version, created, v.content.description))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    by_desc: dict[str, set[int]] = {}
    for version, _, desc in got:
        by_desc.setdefault(desc, set()).add(version)
    # identical content is one version; four contents, four distinct numbers 2..5
    assert all(len(v) == 1 for v in by_desc.values())
    assert sorted(v.pop() for v in by_desc.values()) == [2, 3, 4, 5]
    assert sum(created for _, created, _ in got) == 4


def test_render_keeps_types_interpolates_text_and_refuses_bad_variables():
    content = TemplateContent.parse({**SUMMARIZE, "input": {
        **SUMMARIZE["input"], "max_output_tokens": "{{words}}"}})
    out = render(content, {"text": "hello", "words": 12})
    assert out["messages"][0]["content"] == "Summarize in 12 words."
    assert out["messages"][1]["content"] == "hello"
    assert out["max_output_tokens"] == 12  # whole string: the integer itself
    assert out["model"] == "gpt-4o-mini" and out["temperature"] == 0.2
    assert render(content, {"text": "x"})["max_output_tokens"] == 50  # schema default
    # a value holding {{...}} is not rendered again
    assert render(content, {"text": "{{words}}"})["messages"][1]["content"] == "{{words}}"
    with pytest.raises(TemplateVariablesError, match="unknown variable tone"):
        render(content, {"text": "x", "tone": "dry"})
    with pytest.raises(TemplateVariablesError, match="missing variable: text"):
        render(content, {})
    with pytest.raises(TemplateVariablesError, match="variable words: 0 is less than"):
        render(content, {"text": "x", "words": 0})
    with pytest.raises(TemplateVariablesError, match="variable text"):
        render(content, {"text": 5})
