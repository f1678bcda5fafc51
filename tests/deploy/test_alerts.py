"""deploy/prometheus/alerts.yml: valid for Prometheus (`promtool check rules`), each alert
unit-tested on the situation it names and its look-alike (`promtool test rules`, the
cases in alerts.test.yml), reading only metric names aiecs really exports (its queue
depth, dead letters and Redis availability included: no exporter needed), and a broken
rule fails its tests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from tests.support.deploy_files import DEPLOY, ROOT  # noqa: E402 - after the importorskip

RULES = DEPLOY / "prometheus" / "alerts.yml"
CASES = DEPLOY / "prometheus" / "alerts.test.yml"
#: series of other exporters the rules read (none: aiecs exports what they need)
EXPORTER_NAMES: set[str] = set()


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not installed (run: apt-get install -y prometheus)"
        if os.environ.get("CI"):  # CI installs it (.ci/run)
            pytest.fail(message)
        pytest.skip(message)
    return path


def run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd)


def rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def test_rules_are_valid(promtool):
    out = run(promtool, "check", "rules", RULES.name, cwd=RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rules())} rules found" in out.stdout


def test_rules_pass_their_unit_tests(promtool):
    out = run(promtool, "test", "rules", CASES.name, cwd=CASES.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_a_broken_rule_fails_its_unit_tests(promtool, tmp_path):
    """The cases are not vacuous: an error ratio threshold of 50 % misses the 10 % case,
    a queue depth summed over the workers (each reports the whole queue) doubles it, a
    Redis-down rule on any one worker fires on one worker's own trouble."""
    text = RULES.read_text()
    for old, new in (("> 0.05", "> 0.5"),
                     ("max by (queue) (aiecs_queue_depth", "sum by (queue) (aiecs_queue_depth"),
                     ("max by (role) (aiecs_redis_up", "min by (role) (aiecs_redis_up")):
        assert old in text
        (tmp_path / RULES.name).write_text(text.replace(old, new))
        (tmp_path / CASES.name).write_text(CASES.read_text())
        out = run(promtool, "test", "rules", CASES.name, cwd=tmp_path)
        assert out.returncode != 0, (old, out.stdout)
        assert "FAILED" in out.stdout + out.stderr


def test_every_alert_the_issue_asks_for_is_there_and_tested():
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    # a stuck queue, a growing dead-letter list, workers gone, error ratio, Redis down
    assert {"AiecsQueueStuck", "AiecsDeadLetterGrowing", "AiecsWorkersGone",
            "AiecsExecutionErrorRatio", "AiecsRedisDown"} <= set(alerts)
    cases = yaml.safe_load(CASES.read_text())["tests"]
    firing = {t["alertname"] for case in cases for t in case.get("alert_rule_test", [])
              if t["exp_alerts"]}
    assert firing == set(alerts)  # each alert is seen firing in a case
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
    docs = (ROOT / "docs" / "operations.md").read_text()
    for name in alerts:
        assert name in docs, f"docs/operations.md does not describe {name}"


def test_rules_read_only_metrics_that_exist():
    from aiecs_worker.ops.metrics import METRIC_NAMES

    used = set()
    for rule in rules():
        used |= set(re.findall(r"\b(?:celery|aiecs|redis)_[a-z0-9_]+\b", rule["expr"]))
    assert used, "no metric read"
    ours = {n for n in used if not n.startswith("redis_")}
    assert ours <= set(METRIC_NAMES), ours - set(METRIC_NAMES)
    assert used - ours <= EXPORTER_NAMES
    docs = (ROOT / "docs" / "operations.md").read_text()
    for name in used:
        assert name in docs, f"docs/operations.md does not name {name}"
    recorded = {r["record"] for r in rules() if "record" in r}
    for rule in rules():  # every recorded series read is recorded here
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])  # (not the label values)
        for name in re.findall(r"\baiecs:[a-z0-9_:]+\b", expr):
            assert name in recorded, name
