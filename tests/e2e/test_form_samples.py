"""The page's fallback first input (static/sample.js, used for an operation listed without
an example) passes its operation's input model, for every installed operation: run by
node on the real ``GET /services`` listing's schemas, validated by ``validate_input``."""

from __future__ import annotations

import json
import subprocess

from aiecs_core import load_plugins, validate_input
from aiecs_worker.server.routes.pages import STATIC_DIR

from tests.e2e.nodeproc import HERE


def test_schema_samples_pass_their_operation(node):
    registry = load_plugins()
    listing = registry.listing()
    proc = subprocess.run(
        [node, str(HERE / "form_samples.mjs"),
         json.dumps({"sample_js": str(STATIC_DIR / "sample.js")})],
        input=json.dumps(listing), capture_output=True, text=True, timeout=60, check=True)
    samples = [json.loads(line) for line in proc.stdout.splitlines()]
    listed = sum(len(s["operations"]) for s in listing["services"])
    assert len(samples) == listed >= 9  # the providers' chat/embed/predict and test/*
    for s in samples:
        validate_input(registry.operation(s["mode"], s["service"], s["operation"]), s["sample"])
