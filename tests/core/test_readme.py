"""packages/core/README.md is true to the code: its examples run, its tables match.

Code blocks whose first line is ``# <path>`` are files of the example provider project;
the other ``python`` blocks are run in order, in one namespace, with that project's
``src`` on the path.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from aiecs_core import TaskRequest, errors, hookspecs
from aiecs_core.llm import error_for_status
from aiecs_core.testing import EchoInput

from tests.support.plugin_dists import child_env, discover, install_projects

README = Path(__file__).resolve().parents[2] / "packages" / "core" / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```$", TEXT, flags=re.M | re.S)
FILE_HEADER = re.compile(r"^# ([\w./-]+\.\w+)\n")


def _files() -> dict[str, str]:
    return {m.group(1): code for _, code in BLOCKS if (m := FILE_HEADER.match(code))}


def _snippets() -> list[str]:
    return [code for lang, code in BLOCKS if lang == "python" and not FILE_HEADER.match(code)]


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "my-provider"
    for path, code in _files().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
    return root


def test_readme_has_the_example_project():
    assert set(_files()) == {
        "pyproject.toml", "src/my_provider/__init__.py", "tests/test_conformance.py",
    }
    assert len(_snippets()) >= 5


def test_snippets_run(project, monkeypatch):
    monkeypatch.syspath_prepend(str(project / "src"))
    namespace: dict = {"__name__": "readme"}
    try:
        for i, code in enumerate(_snippets()):
            exec(compile(code, f"{README}:snippet{i}", "exec"), namespace)  # noqa: S102
    finally:
        sys.modules.pop("my_provider", None)


def test_conformance_example_passes(project):
    (project / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(project / "pytest.ini"), "--rootdir",
         str(project), "-p", "no:cacheprovider", "-q", "tests/test_conformance.py"],
        cwd=project,
        env=child_env(project / "src"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 passed" in proc.stdout


def test_example_project_installs_and_is_discovered(project, tmp_path):
    site = install_projects(tmp_path / "site", [project])
    out = discover(
        site, allow="myprovider", run=[("chat", "shouter", "shout", {"text": "hi you"})]
    )
    assert out["listing"]["plugins"] == [
        {"name": "myprovider", "distribution": "my-provider", "version": "0.1.0",
         "services": ["chat/shouter"]}
    ]
    assert out["listing"]["failures"] == []
    assert out["runs"][0]["result"] == {"text": "HI YOU", "words": 2}
    (service,) = out["listing"]["services"]
    assert service["operations"]["count_letters"]["heavy"] is True


def _table(first_header: str) -> list[list[str]]:
    """Rows of the markdown table whose header starts with ``| first_header |``."""
    lines = TEXT.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_errors_table_matches_the_code():
    classes = {
        name: getattr(errors, name)
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
    }
    rows = {row[0].strip("`"): row for row in _table("Class")}
    assert set(rows) == set(classes)
    for name, (_, statuses, retryable, meaning) in rows.items():
        cls = classes[name]
        assert retryable == ("yes" if cls.retryable else "no"), name
        assert meaning, name
        for status in filter(None, (s.strip() for s in statuses.split(","))):
            codes = [500, 502, 503, 599] if status == "5xx" else [int(status)]
            for code in codes:
                assert type(error_for_status(code, "m", provider="p")) is cls, (name, code)


def test_echo_table_lists_every_input_field():
    fields = [row[0].strip("`") for row in _table("Field")]
    assert fields == list(EchoInput.model_fields)


def test_every_hook_is_documented():
    hooks = [name for name in vars(hookspecs) if hasattr(getattr(hookspecs, name),
                                                         "aiecs_spec")]
    assert hooks == ["register_services", "register_templates"]
    for hook in hooks:
        assert f"`{hook}(" in TEXT


def test_documented_identifier_rules():
    assert "`:` and `/` are never allowed" in TEXT
    base = {"user_id": "u", "task_id": "t", "step": 1, "mode": "m", "service": "s"}
    assert TaskRequest(task_name="_private", **base).task_name == "_private"
    with pytest.raises(ValueError):
        TaskRequest(task_name="x", **{**base, "user_id": "_u"})


def test_documented_test_command():
    assert "uv run --package aiecs-core --exact --group test pytest tests/core" in TEXT
