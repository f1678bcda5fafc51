"""Every panel of deploy/grafana/aiecs.json against a real Prometheus (2.42, Debian's
``/usr/bin/prometheus``) scraping a real worker's and a real progress server's /metrics:
each expression, asked through Prometheus's HTTP API, returns data, with the labels its
legend names. A panel reading a family no process exports, a label nothing sets or a
query Prometheus refuses fails here."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
from aiecs_worker import execute_task

from tests.support.events import wait_terminal, wait_until
from tests.support.fake_openai import FakeOpenAI
from tests.support.metrics import metrics_url
from tests.support.redis_server import free_port

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "aiecs.json"


@pytest.fixture
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        message = "prometheus is not installed (run: apt-get install -y prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def panels() -> list[tuple[str, str, str]]:
    """(panel title, expression, legend) of every target."""
    return [(p["title"], t["expr"], t.get("legendFormat", ""))
            for p in json.loads(DASHBOARD.read_text())["panels"] for t in p.get("targets", [])]


class Prometheus:
    def __init__(self, binary: str, tmp: Path, targets: dict[str, str]):
        self.port = free_port()
        jobs = "\n".join(
            f"  - job_name: {job}\n    metrics_path: {urllib.parse.urlsplit(url).path}\n"
            f"    static_configs:\n      - targets: ['{urllib.parse.urlsplit(url).netloc}']"
            for job, url in targets.items())
        config = tmp / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                          f"scrape_configs:\n{jobs}\n")
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list[dict]:
        url = (f"http://127.0.0.1:{self.port}/api/v1/query?"
               + urllib.parse.urlencode({"query": expr, "time": time.time()}))
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - local
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready",  # noqa: S310
                                        timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_every_panel_returns_data_from_a_real_scrape(prometheus_binary, tmp_path, aiecs_redis,
                                                     start_worker, start_server):
    fake = FakeOpenAI().start()
    prom = None
    try:
        worker = start_worker(pool="threads", concurrency=2, env={
            "AIECS_METRICS_PORT": "0", "AIECS_METRICS_HOST": "127.0.0.1",
            "OPENAI_API_KEY": fake.api_key, "OPENAI_BASE_URL": fake.base_url,
            "AIECS_PRICES": json.dumps({"openai/m-1": {"input": 2.0, "output": 8.0}})})
        server = start_server(aiecs_redis.url)
        prom = Prometheus(prometheus_binary, tmp_path, {
            "aiecs-worker": metrics_url(worker.log), "aiecs-server": server.url + "/metrics"})
        wait_until(prom.ready, timeout=60, interval=0.2, message="Prometheus ready")
        wait_until(lambda: len(prom.query("up == 1")) == 2, timeout=30, interval=0.5,
                   message=f"both targets scraped:\n{prom.log.read_text()[-2000:]}")

        # after the first scrapes (so rates see the change): completions, a failure, a
        # priced provider call
        client = aiecs_redis.client()
        runs = [("test", "echo", "echo", {"text": "one two three"}),
                ("test", "echo", "echo", {"text": "one two", "chunks": 2, "delay": 0.3}),
                ("test", "echo", "echo", {"text": "x", "fail": "auth"}),
                ("llm", "openai", "chat", {"model": "m-1",
                                           "messages": [{"role": "user", "content": "hi"}]})]
        ids = []
        for mode, service, op, data in runs:
            task_id = f"t{uuid.uuid4().hex[:10]}"
            execute_task.delay(task_name=op, user_id="alice", task_id=task_id, step=1,
                               mode=mode, service=service, input_data=data, context={})
            ids.append(task_id)
        assert [wait_terminal(client, "alice", t)[0]["status"] for t in ids] == [
            "completed", "completed", "failed", "completed"]
        wait_until(lambda: sum(float(r["value"][1]) for r in prom.query(
            'celery_task_executions_total{status=~"completed|failed"}')) == 4,
            timeout=30, interval=0.5, message="the outcomes scraped")

        def scrapes() -> float:
            return min(float(r["value"][1]) for r in prom.query("count_over_time(up[5m])"))
        seen = scrapes()
        wait_until(lambda: scrapes() >= seen + 2, timeout=30, interval=0.5,
                   message="two more scrapes of each target")

        missing = []
        for title, expr, legend in panels():
            result = prom.query(expr)
            wanted = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
            if not result:
                missing.append(f"{title}: {expr}: no data")
                continue
            for series in result:
                if not wanted <= series["metric"].keys():
                    missing.append(f"{title}: {expr}: labels {series['metric']} lack "
                                   f"{wanted - series['metric'].keys()}")
        assert not missing, "\n".join(missing)

        # and what they say is what happened
        by_status = {r["metric"]["status"]: float(r["value"][1]) for r in prom.query(
            "sum by (status) (celery_task_executions_total)")}
        assert by_status == {"pending": 4, "running": 4, "completed": 3, "failed": 1,
                             "timed_out": 0, "cancelled": 0}, by_status
        # the first failure of its label set shows in increase(): its series was there, at
        # 0, before it (without the pre-set 0 the series starts at 1 and increase() reads 0)
        [first] = prom.query('sum(increase(celery_task_executions_total{status="failed"}[5m]))')
        assert float(first["value"][1]) >= 0.9, first
        [p95] = prom.query("histogram_quantile(0.95, sum by (le) "
                           "(rate(celery_task_duration_seconds_bucket[5m])))")
        assert 0 < float(p95["value"][1]) < 5, p95
        [cost] = prom.query("sum(aiecs_provider_cost_usd_total)")
        assert float(cost["value"][1]) > 0
    finally:
        if prom is not None:
            prom.stop()
        fake.close()
