"""The templates store: templates, their immutable numbered versions, labels.

Labels move by compare-and-swap, with a history of every move. Pure database
(SQLAlchemy Core), safe under concurrency on SQLite and PostgreSQL:

- :func:`publish` numbers a new version ``max + 1`` in the INSERT itself; two publishers
  racing for the same number collide on the primary key and the loser retries (it gets
  the next number, or, when its content is identical, the winner's version: the unique
  ``(template_id, content_hash)`` makes identical content one version, whoever wins).
- :func:`move_label` is a conditional UPDATE (``WHERE version = expected``) or an INSERT
  that does nothing when the label exists: exactly one of two concurrent movers changes
  it, the other gets :class:`~.errors.LabelConflictError` naming the current version. The
  move and its history row commit together.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from .errors import InvalidTemplateError, LabelConflictError, TemplateNotFoundError
from .rendering import LABEL_PATTERN, NAME_PATTERN, TemplateContent, content_hash
from .tables import template_label_moves, template_labels, template_versions, templates

__all__ = ["DEFAULT_LABEL", "TemplateVersion", "check_label", "check_name", "describe", "export",
           "get_version",
           "label_history", "list_templates", "move_label", "moves", "publish", "resolve"]

#: The label a reference without version or label means (as Langfuse's prompts do).
DEFAULT_LABEL = "production"
_RETRIES = 50

# The two lookups every submission by template makes, built once: constructing the
# statement cost as much CPU as running it on SQLite (bench: ``--scenarios allin``).
_VERSION_BY_NUMBER = (
    select(template_versions)
    .join(templates, templates.c.id == template_versions.c.template_id)
    .where(templates.c.name == bindparam("name"),
           template_versions.c.version == bindparam("version")))
_VERSION_BY_LABEL = (
    select(template_versions)
    .join(template_labels, (template_labels.c.template_id == template_versions.c.template_id)
          & (template_labels.c.version == template_versions.c.version))
    .join(templates, templates.c.id == template_versions.c.template_id)
    .where(templates.c.name == bindparam("name"), template_labels.c.label == bindparam("label")))


@dataclass(frozen=True)
class TemplateVersion:
    """One published version."""

    name: str
    version: int
    content: TemplateContent
    content_hash: str
    created_at: float
    created_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The version as JSON data (the API's answer)."""
        return {"name": self.name, "version": self.version, **self.content.to_json(),
                "content_hash": self.content_hash, "created_at": self.created_at,
                "created_by": self.created_by}


def check_name(name: str) -> str:
    """``name`` if it is a valid template name, else InvalidTemplateError."""
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise InvalidTemplateError(f"invalid template name {name!r} (must match "
                                   f"{NAME_PATTERN})")
    return name


def check_label(label: str) -> str:
    """``label`` if it is a valid label name, else InvalidTemplateError."""
    if not isinstance(label, str) or not re.fullmatch(LABEL_PATTERN, label):
        raise InvalidTemplateError(f"invalid label {label!r} (must match {LABEL_PATTERN})")
    return label


def _template_id(conn: Connection, name: str) -> int | None:
    return conn.execute(select(templates.c.id).where(templates.c.name == name)).scalar()


def _ensure_template(engine: Engine, name: str, created_by: str | None,
                     source: str | None) -> int:
    for _ in range(_RETRIES):
        with engine.connect() as conn:
            tid = _template_id(conn, name)
        if tid is not None:
            return tid
        try:
            with engine.begin() as conn:
                return conn.execute(insert(templates).values(
                    name=name, created_at=time.time(), created_by=created_by, source=source
                ).returning(templates.c.id)).scalar_one()
        except IntegrityError:
            continue  # created meanwhile by another publisher: read it
    raise RuntimeError(f"could not create template {name!r}")  # pragma: no cover


def _version(name: str, row: Any) -> TemplateVersion:
    content = TemplateContent.model_validate({
        "mode": row.mode, "service": row.service, "operation": row.operation,
        "input": json.loads(row.input_json),
        "variables_schema": json.loads(row.variables_schema_json),
        "defaults": json.loads(row.defaults_json), "description": row.description})
    return TemplateVersion(name, row.version, content, row.content_hash, row.created_at,
                           row.created_by)


def publish(engine: Engine, name: str, content: TemplateContent | dict[str, Any], *,
            created_by: str | None = None, source: str | None = None
            ) -> tuple[TemplateVersion, bool]:
    """Publish ``content`` as the next version of ``name`` (the template is created on its
    first version). Identical content returns the existing version. Returns ``(version,
    created)``."""
    check_name(name)
    if not isinstance(content, TemplateContent):
        content = TemplateContent.parse(content)
    digest = content_hash(content)
    tid = _ensure_template(engine, name, created_by, source)
    tv = template_versions
    for _ in range(_RETRIES):
        with engine.connect() as conn:
            row = conn.execute(select(tv).where(tv.c.template_id == tid,
                                                tv.c.content_hash == digest)).first()
        if row is not None:
            return _version(name, row), False
        next_version = (select(func.coalesce(func.max(tv.c.version), 0) + 1)
                        .where(tv.c.template_id == tid).scalar_subquery())
        data = content.to_json()
        try:
            with engine.begin() as conn:
                row = conn.execute(insert(tv).values(
                    template_id=tid, version=next_version, mode=content.mode,
                    service=content.service, operation=content.operation,
                    input_json=json.dumps(data["input"]),
                    variables_schema_json=json.dumps(data["variables_schema"]),
                    defaults_json=json.dumps(data["defaults"]),
                    description=content.description, content_hash=digest,
                    created_at=time.time(), created_by=created_by,
                ).returning(*tv.c)).one()
        except IntegrityError:
            continue  # that number (or that content) was taken meanwhile: look again
        return _version(name, row), True
    raise RuntimeError(f"could not publish a version of {name!r}")  # pragma: no cover


def get_version(engine: Engine, name: str, version: int) -> TemplateVersion:
    """Version ``version`` of ``name``, or TemplateNotFoundError."""
    with engine.connect() as conn:
        row = conn.execute(_VERSION_BY_NUMBER, {"name": name, "version": version}).first()
    if row is None:
        raise TemplateNotFoundError(f"template {name!r} has no version {version}",
                                    template=name, version=version)
    return _version(name, row)


def resolve(engine: Engine, name: str, *, version: int | None = None,
            label: str | None = None) -> TemplateVersion:
    """The version a reference means: ``version``, else the one ``label`` (default
    :data:`DEFAULT_LABEL`) points at now."""
    if version is not None:
        return get_version(engine, name, version)
    label = label or DEFAULT_LABEL
    with engine.connect() as conn:
        row = conn.execute(_VERSION_BY_LABEL, {"name": name, "label": label}).first()
        if row is None:
            raise _label_missing(conn, name, label)
    return _version(name, row)


def _label_missing(conn: Connection, name: str, label: str) -> TemplateNotFoundError:
    """The error of a label that points nowhere: no such template, or no such label."""
    known = _template_id(conn, name) is not None
    return TemplateNotFoundError(
        f"template {name!r} has no label {label!r}" if known
        else f"no template {name!r}", template=name, label=label)


_LABEL_VERSION = (
    select(template_labels.c.version)
    .join(templates, templates.c.id == template_labels.c.template_id)
    .where(templates.c.name == bindparam("name"), template_labels.c.label == bindparam("label")))


def label_version(engine: Engine, name: str, label: str | None = None) -> int:
    """The version number ``label`` (default :data:`DEFAULT_LABEL`) points at now: one
    indexed query, for a caller that keeps the (immutable) versions themselves."""
    label = label or DEFAULT_LABEL
    with engine.connect() as conn:
        found = conn.execute(_LABEL_VERSION, {"name": name, "label": label}).scalar()
        if found is None:
            raise _label_missing(conn, name, label)
    return int(found)


def list_templates(engine: Engine) -> list[dict[str, Any]]:
    """Every template: name, source, newest version, its description, labels."""
    tv = template_versions
    with engine.connect() as conn:
        newest = (select(tv.c.template_id, func.max(tv.c.version).label("v"))
                  .group_by(tv.c.template_id).subquery())
        rows = conn.execute(
            select(templates, newest.c.v, tv.c.description, tv.c.mode, tv.c.service,
                   tv.c.operation)
            .join(newest, newest.c.template_id == templates.c.id)
            .join(tv, (tv.c.template_id == templates.c.id) & (tv.c.version == newest.c.v))
            .order_by(templates.c.name)).all()
        labels = _labels(conn)
    return [{"name": r.name, "latest_version": r.v, "description": r.description,
             "mode": r.mode, "service": r.service, "operation": r.operation,
             "source": r.source, "created_at": r.created_at,
             "labels": labels.get(r.id, {})} for r in rows]


def _labels(conn: Connection, template_id: int | None = None) -> dict[int, dict[str, int]]:
    q = select(template_labels)
    if template_id is not None:
        q = q.where(template_labels.c.template_id == template_id)
    out: dict[int, dict[str, int]] = {}
    for r in conn.execute(q.order_by(template_labels.c.label)):
        out.setdefault(r.template_id, {})[r.label] = r.version
    return out


def describe(engine: Engine, name: str) -> dict[str, Any]:
    """One template: its versions (newest first, without their content) and labels."""
    tv = template_versions
    with engine.connect() as conn:
        t = conn.execute(select(templates).where(templates.c.name == name)).first()
        if t is None:
            raise TemplateNotFoundError(f"no template {name!r}", template=name)
        versions = conn.execute(
            select(tv.c.version, tv.c.content_hash, tv.c.description, tv.c.created_at,
                   tv.c.created_by).where(tv.c.template_id == t.id)
            .order_by(tv.c.version.desc())).all()
        labels = _labels(conn, t.id).get(t.id, {})
    return {"name": t.name, "source": t.source, "created_at": t.created_at,
            "labels": labels,
            "versions": [dict(v._mapping) for v in versions]}


def move_label(engine: Engine, name: str, label: str, version: int, *,
               expected_version: int | None, moved_by: str | None = None) -> dict[str, Any]:
    """Point ``label`` at ``version`` if it points at ``expected_version`` now (None: the
    label must not exist yet); else LabelConflictError with the current version. The move
    is recorded in the label's history in the same transaction."""
    global _moves
    check_label(label)
    now = time.time()
    try:
        return _move_label(engine, name, label, version, expected_version, moved_by, now)
    finally:
        # tried here: a cache of label reads in this process reads again (its own moves are
        # seen at once; a conflict says another process moved it)
        _moves += 1


#: Label moves tried by this process (:func:`move_label`, successful or not).
_moves = 0


def moves() -> int:
    """How many label moves this process has tried: a cache of label reads compares it to
    forget what this process may have changed."""
    return _moves


def _move_label(engine: Engine, name: str, label: str, version: int,
                expected_version: int | None, moved_by: str | None, now: float
                ) -> dict[str, Any]:
    tl = template_labels
    with engine.begin() as conn:
        tid = _template_id(conn, name)
        if tid is None:
            raise TemplateNotFoundError(f"no template {name!r}", template=name)
        exists = conn.execute(select(template_versions.c.version).where(
            template_versions.c.template_id == tid,
            template_versions.c.version == version)).first()
        if exists is None:
            raise TemplateNotFoundError(f"template {name!r} has no version {version}",
                                        template=name, version=version)
        if expected_version is None:
            changed = conn.execute(_insert_if_absent(conn, tl).values(
                template_id=tid, label=label, version=version, updated_at=now,
                updated_by=moved_by).returning(tl.c.version)).first()
        else:
            changed = conn.execute(update(tl).where(
                tl.c.template_id == tid, tl.c.label == label,
                tl.c.version == expected_version).values(
                version=version, updated_at=now, updated_by=moved_by
            ).returning(tl.c.version)).first()
        if changed is None:
            current = conn.execute(select(tl.c.version).where(
                tl.c.template_id == tid, tl.c.label == label)).scalar()
            raise LabelConflictError(
                f"label {label!r} of template {name!r} points at "
                + (f"version {current}" if current is not None else "nothing")
                + ", not " + (f"version {expected_version}" if expected_version is not None
                              else "nothing (expected_version null: a new label)")
                + "; read it again and retry with expected_version = its version",
                current_version=current)
        conn.execute(insert(template_label_moves).values(
            template_id=tid, label=label, from_version=expected_version, to_version=version,
            moved_at=now, moved_by=moved_by))
    return {"name": name, "label": label, "version": version,
            "previous_version": expected_version, "moved_at": now}


def _insert_if_absent(conn: Connection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


def label_history(engine: Engine, name: str, label: str, *, limit: int = 100
                  ) -> list[dict[str, Any]]:
    """The moves of ``label``, newest first."""
    m = template_label_moves
    with engine.connect() as conn:
        tid = _template_id(conn, name)
        if tid is None:
            raise TemplateNotFoundError(f"no template {name!r}", template=name)
        rows = conn.execute(select(m.c.from_version, m.c.to_version, m.c.moved_at,
                                   m.c.moved_by)
                            .where(m.c.template_id == tid, m.c.label == label)
                            .order_by(m.c.id.desc()).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


def export(engine: Engine, name: str | None = None) -> list[dict[str, Any]]:
    """Every version of every template (or of ``name``), oldest first, and the labels: what
    :func:`publish` and :func:`move_label` rebuild them from (``aiecs template export``)."""
    names = [name] if name is not None else [t["name"] for t in list_templates(engine)]
    out = []
    for n in names:
        info = describe(engine, n)
        versions = [get_version(engine, n, v["version"]) for v in reversed(info["versions"])]
        out.append({"name": n, "labels": info["labels"],
                    "versions": [{"version": v.version, **v.content.to_json()}
                                 for v in versions]})
    return out
