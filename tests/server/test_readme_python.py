"""The README's Python blocks run verbatim against a real ``aiecs dev``, after the one
documented line (``eval "$(uv run aiecs dev --print-env)"``), with the example plugin
installed the README's way while the stack runs (it notices, and restarts its worker and
server); removing the plugin is noticed too."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

from aiecs_worker.cli.dev import env_file

from tests.server.test_dev import DevProcess, _env
from tests.support.plugin_dists import install_projects
from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, flags=re.M | re.S)


def _exports(text: str) -> dict[str, str]:
    words = shlex.split(text.strip())
    assert words[0] == "export", text
    return dict(word.split("=", 1) for word in words[1:])


def test_readme_python_blocks_run_against_aiecs_dev(tmp_path):
    assert len(BLOCKS) == 3, "a new README Python block: check it runs here"
    assert 'eval "$(uv run aiecs dev --print-env)"' in README
    site = tmp_path / "site"  # where `uv pip install` puts the plugin (on the stack's path)
    env = _env(PYTHONPATH=str(site))
    port = free_port()
    # a file left by a SIGKILLed stack (its process is gone) is cleared by the next one
    gone_pid = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True)
    stale = env_file(1)
    stale.parent.mkdir(mode=0o700, exist_ok=True)
    stale.write_text(f"AIECS_DEV_PID={gone_pid.stdout.strip()}\nCELERY_BROKER_URL=x\n")
    dev = DevProcess(env, port)
    try:
        shown = dev.wait_for(r"^\s+python:\s+(export .*)").group(1)
        assert not stale.exists()
        printed = subprocess.run(
            [sys.executable, "-m", "aiecs_worker.cli", "dev", "--print-env", "--port",
             str(port)], env=env, capture_output=True, text=True, timeout=60)
        assert printed.returncode == 0, printed.stderr
        exports = _exports(printed.stdout)
        assert exports == _exports(shown)
        assert set(exports) == {"CELERY_BROKER_URL", "REDIS_URL", "AIECS_TEST_SERVICES"}
        assert exports["CELERY_BROKER_URL"].startswith("redis://127.0.0.1:")
        # the page's hint "aiecs token USER_ID" works against the dev stack too, though no
        # shell has its secret
        url = dev.wait_for(r"page:\s+(\S+)").group(1).rstrip("/")
        with urllib.request.urlopen(url + "/", timeout=10) as resp:
            page = resp.read().decode()
        assert 'placeholder="paste a token (or: aiecs token USER_ID)"' in page
        assert "aiecs token USER_ID, run with the server's AIECS_SECRET_KEY (no key needed " \
               "against aiecs dev)" in page.replace("&#39;", "'")
        token = subprocess.run(
            [sys.executable, "-m", "aiecs_worker.cli", "token", "tester", "--server", url],
            env=env, capture_output=True, text=True, timeout=60)
        assert token.returncode == 0, token.stderr
        assert f"a development token from {url}" in token.stderr
        req = urllib.request.Request(url + "/schedules", headers={
            "Authorization": f"Bearer {token.stdout.strip()}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

        # README: "add it with uv pip install ./examples/aiecs-example-spec" (dev running)
        install_projects(site, [REPO / "examples" / "aiecs-example-spec"])
        dev.wait_for(r"aiecs dev: plugins changed \(installed: spec_examples\): restarting "
                     r"the worker and the server", timeout=60)
        dev.wait_for(r"aiecs dev: worker and server restarted; plugins: .*spec_examples",
                     timeout=90)

        program = "\n".join(BLOCKS)  # in order, in one program, as a reader pastes them
        ran = subprocess.run([sys.executable, "-c", program], env={**env, **exports},
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        lines = ran.stdout.splitlines()
        assert lines[0] == "{'sentiment': 'neutral', 'words': 7, 'language': 'en'}", lines
        assert "'total': 3" in lines[1], lines
        assert lines[2] in ("running", "completed"), lines

        for installed in site.iterdir():  # the README's uninstall, in effect
            if installed.is_dir():
                shutil.rmtree(installed)
        dev.wait_for(r"aiecs dev: plugins changed \(removed: spec_examples\)", timeout=60)
        dev.wait_for(r"aiecs dev: worker and server restarted", timeout=90)
        assert dev.interrupt() == 0
        gone = subprocess.run(
            [sys.executable, "-m", "aiecs_worker.cli", "dev", "--print-env", "--port",
             str(port)], env=env, capture_output=True, text=True, timeout=60)
        assert gone.returncode == 1
        # (other stacks of this user, e.g. other test runs', would be named after it)
        assert gone.stderr.startswith(f"error: no aiecs dev stack runs on port {port}")
    finally:
        dev.kill()
