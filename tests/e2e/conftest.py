"""Browser and JavaScript-client tests: node, the npm packages of tests/e2e (``npm ci``) and
Chromium (Debian's ``chromium``). Without them these tests skip with the reason, except in
CI (``CI`` set), where a missing tool is a failure: CI installs them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def _missing(what: str) -> None:
    message = f"{what} (run: apt-get install -y nodejs npm chromium && npm ci --prefix tests/e2e)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        _missing("node is not installed")
    if not (HERE / "node_modules" / "socket.io-client").is_dir():
        _missing("tests/e2e/node_modules is missing")
    return path


@pytest.fixture(scope="session")
def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    _missing("chromium is not installed")
    raise AssertionError  # unreachable


@pytest.fixture
def output_dir(request) -> Path:
    """test-output/e2e/<test name>/ at the repository root (git-ignored)."""
    path = REPO / "test-output" / "e2e" / request.node.name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@pytest.fixture(scope="module")
def page_server():
    """A dev-mode server (the page's sign-in box, /dev/token) on the session's Redis, with
    a known secret so tests can also mint tokens."""
    from tests.support.processes import ServerProcess

    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail("the session Redis is not running (is redis-server installed?)")
    server = ServerProcess(redis_url=url, env={"AIECS_DEV": "1"}).start()
    yield server
    server.stop()
    print("--- server log (last 80 lines) ---")
    print("\n".join(server.log().splitlines()[-80:]))
    server.close()
