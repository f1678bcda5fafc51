"""A bad setting stops every command with ONE line on stderr naming the variable, what is
wrong with its value and the fix (exit code 2), never a traceback; a Python program
importing aiecs_worker gets the ConfigurationError itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
BAD = {"CELERY_TASK_SOFT_TIME_LIMIT": "abc"}
EXPECTED = ("CELERY_TASK_SOFT_TIME_LIMIT='abc': Input should be a valid integer",
            "fix: set CELERY_TASK_SOFT_TIME_LIMIT to a valid value, or unset it for its "
            "default (300)")

COMMANDS = [
    [str(BIN / "aiecs"), "health"],
    [str(BIN / "aiecs"), "token", "someone"],
    [str(BIN / "aiecs"), "submit", "echo", "echo", "--mode", "test"],
    [str(BIN / "aiecs"), "plugins"],
    [str(BIN / "aiecs"), "worker", "--processes", "1"],
    [str(BIN / "aiecs"), "dev"],
    [sys.executable, "-m", "aiecs_worker.cli", "serve"],
    [str(BIN / "celery"), "-A", "aiecs_worker", "worker"],
    [sys.executable, "-m", "celery", "-A", "aiecs_worker", "beat"],
]


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join([Path(c[0]).name, *c[1:3]]))
def test_a_bad_setting_is_one_line(cmd):
    proc = _run(cmd, BAD)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aiecs: invalid aiecs configuration: ")
    assert all(part in lines[0] for part in EXPECTED), lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


def test_a_bad_server_setting_is_one_line():
    proc = _run([str(BIN / "aiecs"), "serve"], {"AIECS_PORT": "abc"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: invalid aiecs server configuration: AIECS_PORT='abc': Input should be a valid "
        "integer, unable to parse string as an integer; fix: set AIECS_PORT to a valid value, "
        "or unset it for its default (8000)"]


def test_a_program_gets_the_exception():
    proc = _run([sys.executable, "-c", "import aiecs_worker"], BAD)
    assert proc.returncode == 1
    assert "aiecs_core.errors.ConfigurationError: invalid aiecs configuration: " \
           "CELERY_TASK_SOFT_TIME_LIMIT='abc'" in proc.stderr
