"""The layer contracts of the root pyproject.toml (docs/architecture.md) hold, and
``lint-imports`` does catch an import that breaks one (so a passing run means something)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "lint-imports is not installed (the dev group has import-linter)"
    return subprocess.run([exe, "--no-cache", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_every_layer_imports_only_downward():
    out = _lint_imports()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The same tool, told that the store sits above the runner (it does not: the runner
    imports the store), reports the runner's imports of the store as broken."""
    config = tmp_path / "inverted.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["aiecs_worker"]\n\n'
        '[[tool.importlinter.contracts]]\nid = "inverted"\nname = "inverted"\n'
        'type = "layers"\ncontainers = ["aiecs_worker"]\nlayers = ["store", "runner"]\n')
    out = _lint_imports(str(config))
    assert out.returncode != 0
    assert "aiecs_worker.runner is not allowed to import aiecs_worker.store" in out.stdout
