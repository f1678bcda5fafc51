"""The type checker, as CI runs it: mypy with the root pyproject's ``[tool.mypy]``.

Strict, and clean, on the contracts (aiecs_core), the provider packages, the public API
of aiecs_worker (its ``__init__``) and its settings and entry point. The rest of
aiecs_worker is checked without strict's annotation demands, against a baseline
(tests/mypy_baseline.txt: the errors it had when the checker came, by message, without
path or line, so moving a module keeps them matched): a new error fails; a fixed one
should be deleted from the file.

Regenerate the baseline (only to drop fixed errors)::

    uv run mypy | python tests/test_types.py > tests/mypy_baseline.txt
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "tests" / "mypy_baseline.txt"
#: The non-strict part: aiecs_worker's modules but the strict ones (pyproject.toml): its
#: __init__, the settings and the entry point.
LOOSE = re.compile(r"^packages/worker/src/aiecs_worker/"
                   r"(?!(__init__|settings|server/settings|console)\.py:).+\.py:\d+: ")
ERROR = re.compile(r"^(?P<path>[^:]+\.py):\d+: error: (?P<message>.+)$")


def errors(output: str) -> list[tuple[str, str]]:
    """``(path, message [code])`` of each error mypy printed."""
    return [(m["path"], m["message"]) for m in map(ERROR.match, output.splitlines()) if m]


def test_mypy_is_clean_where_strict_and_no_worse_elsewhere():
    mypy = shutil.which("mypy", path=str(Path(sys.executable).parent))
    assert mypy, "mypy is in the workspace's dev group"
    proc = subprocess.run([mypy], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr  # 2: mypy itself failed
    found = errors(proc.stdout)
    assert found or proc.returncode == 0, proc.stdout + proc.stderr
    strict = [f"{path}: {message}" for path, message in found
              if not LOOSE.match(f"{path}:0: ")]
    assert strict == [], "\n".join(strict)
    baseline = collections.Counter(
        line for line in BASELINE.read_text().splitlines() if line.strip())
    new = collections.Counter(message for _, message in found) - baseline
    assert not new, "new type errors:\n" + "\n".join(
        f"{path}: {message}" for path, message in found if message in new)


if __name__ == "__main__":  # the baseline from mypy's output on stdin
    print("\n".join(sorted(message for path, message in errors(sys.stdin.read())
                           if LOOSE.match(f"{path}:0: "))))
