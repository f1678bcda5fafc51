"""The example plugins under ``examples/``, built and installed for tests.

They are not workspace members (``uv sync`` never installs them into a development
environment), so tests that need one build it once per session into a private directory
and give that directory to the child processes that need it (``PYTHONPATH``), exactly as
a plugin installed next to the worker.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.plugin_dists import install_projects

ROOT = Path(__file__).resolve().parents[2]
SPEC_EXAMPLE = ROOT / "examples" / "aiecs-example-spec"


@pytest.fixture(scope="session")
def spec_examples_site(tmp_path_factory) -> Path:
    """A directory holding aiecs-example-spec (chat/text_analyzer, document/doc_generator)
    as installed: put it on PYTHONPATH."""
    return install_projects(tmp_path_factory.mktemp("spec-example") / "site", [SPEC_EXAMPLE])


def with_site(site: Path) -> dict[str, str]:
    """``env`` for a child process that should also see ``site``."""
    return {"PYTHONPATH": os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)}
