"""The READMEs (and docs/security.md, for the limits) document every setting the code
reads, with its real default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiecs_worker.server.settings import ServerSettings
from aiecs_worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCS = "".join((REPO / p).read_text()
               for p in ("README.md", "packages/worker/README.md", "docs/security.md"))


def _settings():
    for cls in (Settings, ServerSettings):
        for name, field in cls.model_fields.items():
            alias = field.validation_alias if isinstance(field.validation_alias, str) else name
            yield alias.upper(), field


SETTINGS = list(_settings())


@pytest.mark.parametrize(("env", "field"), SETTINGS, ids=[env for env, _ in SETTINGS])
def test_every_setting_is_in_a_configuration_table(env, field):
    rows = [line for line in DOCS.splitlines() if line.startswith("|") and f"`{env}`" in line]
    assert rows, f"{env} is read by the code but no README table documents it"
    default = field.default
    if isinstance(default, int) and not isinstance(default, bool):
        cells = " ".join(rows)
        assert re.search(rf"`{default}`", cells), f"{env}: default {default} not documented"


def _provider_env_vars() -> set[str]:
    names: set[str] = set()
    for src in (REPO / "packages").glob("*/src/**/*.py"):
        names |= set(re.findall(r'"((?:OPENAI|XAI|VERTEX|GOOGLE)_[A-Z_]+)"', src.read_text()))
    return names


def test_every_provider_variable_is_in_the_root_configuration_table():
    names = _provider_env_vars()
    assert {"OPENAI_API_KEY", "XAI_API_KEY", "VERTEX_PROJECT_ID"} <= names  # the scan works
    root = (REPO / "README.md").read_text()
    missing = sorted(n for n in names if not any(
        line.startswith("|") and f"`{n}`" in line for line in root.splitlines()))
    assert missing == []
