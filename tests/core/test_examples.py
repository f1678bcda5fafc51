"""The example plugins under ``examples/``: installed as a user installs them, their own
tests (aiecs's conformance suite, entry point included) pass, and ``aiecs plugins`` lists
what they serve."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.examples import SPEC_EXAMPLE
from tests.support.plugin_dists import child_env


def test_spec_example_passes_its_own_tests(spec_examples_site, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), str(SPEC_EXAMPLE / "tests")],
        cwd=tmp_path, env=child_env(spec_examples_site), capture_output=True, text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "9 passed" in proc.stdout, proc.stdout


def test_spec_example_is_listed_with_its_distribution(spec_examples_site):
    proc = subprocess.run(
        [sys.executable, "-m", "aiecs_worker.cli", "plugins", "--json"],
        env=child_env(spec_examples_site, {"AIECS_PLUGINS": "spec_examples"}),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    assert listing["plugins"] == [{
        "name": "spec_examples", "distribution": "aiecs-example-spec", "version": "0.1.0",
        "services": ["chat/text_analyzer", "document/doc_generator"]}]
    ops = {(s["mode"], s["service"]): s["operations"] for s in listing["services"]}
    assert ops[("document", "doc_generator")]["generate_document"]["heavy"] is True
    assert list(ops[("chat", "text_analyzer")]) == ["analyze_text"]


def test_dev_environment_does_not_serve_the_spec_examples():
    """The workspace's own plugins (installed by uv sync) leave the example names free."""
    proc = subprocess.run(
        [sys.executable, "-m", "aiecs_worker.cli", "plugins", "--json"],
        env=child_env(None, {"AIECS_PLUGINS": "echo,testplugin"}),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    keys = {(s["mode"], s["service"]) for s in json.loads(proc.stdout)["services"]}
    assert keys == {("test", "echo"), ("test", "buggy")}
