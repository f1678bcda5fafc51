"""Build real plugin distributions and install them where a child Python finds them.

A :class:`PluginDist` is a tiny project (``pyproject.toml`` with an ``aiecs`` entry point,
and one module). :func:`install_dists` writes each one to disk, then builds and installs
them all with ``uv pip install --target`` through their build backend (``uv_build``), as
pip would for a user. The result is a directory of installed packages and ``.dist-info``
metadata: put it on ``PYTHONPATH`` and ``importlib.metadata`` discovers the entry points,
exactly as for a plugin installed in a virtualenv, while the shared environment stays
untouched. :func:`run_python` runs code in such a child interpreter.

Typical use, from a session-scoped fixture (building takes a moment; reuse the result)::

    site = install_dists(tmp_path_factory.mktemp("plugins"), [PluginDist("good", SOURCE)])
    proc = run_python(site, "import aiecs_core; ...", env={"AIECS_PLUGINS": "good"})
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Build backend of the generated projects (the one the workspace's own members use).
BUILD_SYSTEM = 'requires = ["uv_build>=0.8,<0.14"]\nbuild-backend = "uv_build"'


@dataclass(frozen=True)
class PluginDist:
    """One plugin distribution: an entry point ``entry_point = module`` in group ``aiecs``."""

    entry_point: str
    """Entry-point name (the plugin's name, as in ``AIECS_PLUGINS``)."""
    source: str
    """Source of the plugin module (dedented before writing)."""
    dist_name: str | None = None
    """Distribution name; default ``aiecs-test-<entry_point>``."""
    module: str | None = None
    """Import name of the module; default the distribution name with underscores."""
    version: str = "0.1.0"
    group: str = "aiecs"
    target: str | None = None
    """What the entry point names; default the module (a wrong one tests the kit)."""

    @property
    def distribution(self) -> str:
        return self.dist_name or f"aiecs-test-{self.entry_point}"

    @property
    def module_name(self) -> str:
        return self.module or self.distribution.replace("-", "_").replace(".", "_")

    def write(self, root: Path) -> Path:
        """Write the project under ``root/<distribution>`` and return its directory."""
        project = root / self.distribution
        package = project / "src" / self.module_name
        package.mkdir(parents=True, exist_ok=True)
        (project / "pyproject.toml").write_text(
            textwrap.dedent(
                f"""\
                [project]
                name = "{self.distribution}"
                version = "{self.version}"
                requires-python = ">=3.11"
                dependencies = ["aiecs-core"]

                [project.entry-points.{self.group}]
                {self.entry_point} = "{self.target or self.module_name}"

                [build-system]
                """
            )
            + BUILD_SYSTEM
            + "\n"
        )
        (package / "__init__.py").write_text(textwrap.dedent(self.source).lstrip())
        return project


def install_dists(root: Path, dists: Iterable[PluginDist], *, timeout: float = 300) -> Path:
    """Build and install ``dists`` into ``root/site``; return that directory.

    Dependencies are not installed (``--no-deps``): ``aiecs-core`` comes from the running
    environment. Raises ``RuntimeError`` with uv's output when the build fails.
    """
    root.mkdir(parents=True, exist_ok=True)
    sources = root / "src"
    return install_projects(root / "site", [dist.write(sources) for dist in dists], timeout)


def install_projects(site: Path, projects: Iterable[Path], timeout: float = 300) -> Path:
    """Build the project directories ``projects`` and install them into ``site``."""
    uv = shutil.which("uv")
    if uv is None:
        raise RuntimeError("uv is not installed: it builds and installs the test plugins")
    env = {k: v for k, v in os.environ.items() if k not in ("UV_OFFLINE", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [uv, "pip", "install", "--no-deps", "--python", sys.executable, "--target", str(site),
         *map(str, projects)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"uv pip install failed ({proc.returncode}):\n{proc.stderr}")
    return site


def child_env(site: Path | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child Python that sees ``site`` (and no inherited allow-list)."""
    result = {k: v for k, v in os.environ.items() if k != "AIECS_PLUGINS"}
    if site is not None:
        result["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p
        )
    result.update(env or {})
    return result


def run_python(
    site: Path | None,
    code: str,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child of this interpreter with ``site`` on its path."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=child_env(site, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


#: Child program: load plugins the way the worker does, run the requested operations
#: through the registry, and print one JSON document.
_DISCOVER = """
import json, sys
import aiecs_core
from aiecs_core.testing import run_operation

registry = aiecs_core.load_plugins()
runs = []
for mode, service, op, data in json.loads(sys.argv[1]):
    try:
        result, ctx = run_operation(registry, mode, service, op, data)
        runs.append({"result": result, "events": [e.model_dump(mode="json") for e in ctx.events],
                     "usage": [u.model_dump(mode="json") for u in ctx.usage]})
    except Exception as exc:
        runs.append({"error": type(exc).__name__, "message": str(exc)})
print(json.dumps({"listing": registry.listing(), "runs": runs}))
"""


def discover(
    site: Path | None,
    *,
    allow: str | None = None,
    run: Iterable[tuple[str, str, str, dict[str, Any]]] = (),
    timeout: float = 120,
) -> dict[str, Any]:
    """In a child Python seeing ``site``: ``load_plugins()`` (``AIECS_PLUGINS=allow`` when
    given) and run each ``(mode, service, operation, input_data)`` through the registry.

    Returns ``{"listing": registry.listing(), "runs": [...]}``; each run is
    ``{"result", "events", "usage"}`` or ``{"error", "message"}``.
    """
    env = {"AIECS_PLUGINS": allow} if allow is not None else {}
    proc = subprocess.run(
        [sys.executable, "-c", _DISCOVER, json.dumps([list(r) for r in run])],
        env=child_env(site, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"plugin discovery child failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
