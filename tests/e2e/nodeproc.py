"""Run the node scripts of tests/e2e and read their JSON-lines output."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def run_node(node: str, script: str, options: dict[str, Any], timeout: float = 180.0
             ) -> tuple[int, list[dict[str, Any]], str]:
    """(exit code, the JSON lines it printed, stderr)."""
    proc = subprocess.run([node, str(HERE / script), json.dumps(options)], capture_output=True,
                          text=True, timeout=timeout, cwd=HERE)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines, proc.stderr
