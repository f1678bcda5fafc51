"""``aiecs template import|export|list|show|label``: templates over the templates API
(docs/templates.md), as YAML files that can live in git.

A file holds one template or a list of them (``templates:``), each either one version's
content at its top level or ``versions:`` (published in order) and ``labels:`` (label ->
version number *in the file*). Import publishes every version (identical content is not a
new version) and moves each label to the version it names, by compare-and-swap on what
it just read. ``export`` writes that same format. Writes need an operator token
(``aiecs token USER --operator``; a token signed here for --user, or a development
server's, gets the scope). YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from .common import api, client_options, connect, fail
from .submit import template_arg

__all__ = ["template"]

_CONTENT = ("mode", "service", "operation", "input", "variables_schema", "defaults",
            "description")


def _yaml() -> Any:
    import yaml  # type: ignore[import-untyped]  # deferred: only these commands use YAML

    return yaml


@click.group()
def template() -> None:
    """Templates: import/export YAML files, list, show, move labels."""


def _entries(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, dict) and "templates" in doc:
        doc = doc["templates"]
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list) or not all(isinstance(t, dict) and "name" in t for t in doc):
        fail("the file holds no template: a mapping with name (and its content, or "
             "versions), or a list of them under templates:", 2)
    return doc


@template.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@client_options
def import_(file, server_url, token_opt, user):
    """Publish the templates of FILE (YAML; - for stdin) and move their labels."""
    yaml = _yaml()
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
        doc = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        fail(f"cannot read {file}: {exc}", 2)
    entries = _entries(doc)
    url, tok = connect(server_url, token_opt, user, operator=True)
    for entry in entries:
        name = entry["name"]
        versions = entry.get("versions") or [{k: entry[k] for k in _CONTENT if k in entry}]
        numbers: dict[Any, int] = {}
        for i, content in enumerate(versions):
            body = {"name": name, **{k: content[k] for k in _CONTENT if k in content}}
            out = api(url, tok, "POST", "/templates", body,
                      refused=f"template {name!r} refused: ")
            got = out["template"]["version"]
            numbers[content.get("version", i + 1)] = got
            click.echo(f"{name}: version {got}" + (" published" if out["created"]
                                                   else " (unchanged)"))
        labels = entry.get("labels") or {}
        if not isinstance(labels, dict):
            fail(f"template {name!r}: labels must map a label to a version", 2)
        current = api(url, tok, "GET", f"/templates/{name}")["labels"] if labels else {}
        for label, wanted in labels.items():
            target = numbers.get(wanted)
            if target is None:
                fail(f"template {name!r}: label {label!r} names version {wanted}, which "
                     "the file does not hold", 2)
            if current.get(label) == target:
                continue
            api(url, tok, "PUT", f"/templates/{name}/labels/{label}",
                {"version": target, "expected_version": current.get(label)},
                refused=f"label {label!r} of {name!r} not moved: ")
            click.echo(f"{name}: {label} -> version {target}")


@template.command("export")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Write to this file (default: stdout).")
@client_options
def export(name, output, server_url, token_opt, user):
    """Write every template (or NAME), all versions and labels, as YAML."""
    url, tok = connect(server_url, token_opt, user)
    names = [name] if name else [t["name"] for t in api(url, tok, "GET", "/templates")
                                 ["templates"]]
    out = []
    for n in names:
        info = api(url, tok, "GET", f"/templates/{n}")
        versions = []
        for v in sorted(x["version"] for x in info["versions"]):
            full = api(url, tok, "GET", f"/templates/{n}/versions/{v}")
            versions.append({"version": v, **{k: full[k] for k in _CONTENT}})
        out.append({"name": n, "labels": info["labels"], "versions": versions})
    text = _yaml().safe_dump({"templates": out}, sort_keys=False, allow_unicode=True)
    if output:
        Path(output).write_text(text)
    else:
        click.echo(text, nl=False)


@template.command("list")
@client_options
def list_(server_url, token_opt, user):
    """List the templates: newest version, labels, what they run."""
    url, tok = connect(server_url, token_opt, user)
    for t in api(url, tok, "GET", "/templates")["templates"]:
        labels = ", ".join(f"{k}={v}" for k, v in t["labels"].items()) or "-"
        click.echo(f"{t['name']}  v{t['latest_version']}  {t['mode']}/{t['service']}."
                   f"{t['operation']}  labels: {labels}  {t['description']}")


@template.command("show")
@click.argument("ref", metavar="NAME[@VERSION|:LABEL]")
@client_options
def show(ref, server_url, token_opt, user):
    """Print a template's versions and labels, or one version's content (as YAML)."""
    spec = template_arg(ref)
    url, tok = connect(server_url, token_opt, user)
    info = api(url, tok, "GET", f"/templates/{spec['name']}")
    version = spec.get("version")
    if "label" in spec:
        version = info["labels"].get(spec["label"])
        if version is None:
            fail(f"template {spec['name']!r} has no label {spec['label']!r}", 1)
    if version is None:
        click.echo(_yaml().safe_dump(info, sort_keys=False, allow_unicode=True), nl=False)
        return
    full = api(url, tok, "GET", f"/templates/{spec['name']}/versions/{version}")
    click.echo(_yaml().safe_dump(full, sort_keys=False, allow_unicode=True), nl=False)


@template.command("label")
@click.argument("name")
@click.argument("label")
@click.argument("version", type=int)
@click.option("--expected", type=int, default=None, metavar="VERSION",
              help="The version the label points at now (default: read it now); the move "
                   "is refused if it moved meanwhile.")
@click.option("--history", "history_", is_flag=True,
              help="Print the label's moves after moving it.")
@client_options
def label(name, label, version, expected, history_, server_url, token_opt, user):
    """Point LABEL of template NAME at VERSION (compare-and-swap)."""
    url, tok = connect(server_url, token_opt, user, operator=True)
    if expected is None:
        expected = api(url, tok, "GET", f"/templates/{name}")["labels"].get(label)
    out = api(url, tok, "PUT", f"/templates/{name}/labels/{label}",
              {"version": version, "expected_version": expected},
              refused=f"label {label!r} of {name!r} not moved: ")
    click.echo(f"{name}: {label} -> version {out['version']} (was "
               f"{out['previous_version'] if out['previous_version'] is not None else '-'})")
    if history_:
        for m in api(url, tok, "GET", f"/templates/{name}/labels/{label}/history")["moves"]:
            click.echo(f"  {m['moved_at']:.0f}  {m['from_version']} -> {m['to_version']}  "
                       f"{m['moved_by'] or ''}")
