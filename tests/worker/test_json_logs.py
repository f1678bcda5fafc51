"""``AIECS_LOG_FORMAT=json``: a real worker at DEBUG, HTTP client logs included, writes one
JSON object per line, execution lines carry the execution's identity, and the canary
secrets (the provider key, the token-signing key) appear on no line, not even in a
provider's traceback."""

from __future__ import annotations

import json
import uuid

from aiecs_worker import execute_task

from tests.support.events import wait_terminal, wait_until
from tests.support.fake_echo import EchoingOpenAI
from tests.support.fake_openai import Error, Text
from tests.support.processes import in_process_pools

CHAT = {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]}


def run(client, service: str, task_name: str, input_data: dict, mode: str = "llm") -> tuple:
    task_id = f"t{uuid.uuid4().hex[:10]}"
    execute_task.delay(task_name=task_name, user_id="alice", task_id=task_id, step=1,
                       mode=mode, service=service, input_data=input_data, context={})
    terminal, _ = wait_terminal(client, "alice", task_id)
    return task_id, terminal["status"]


@in_process_pools  # asyncio: the identity bound by task_prerun sent on the loop
def test_json_lines_with_identity_and_no_secret(aiecs_redis, start_worker):
    canary = f"plain{uuid.uuid4().hex}"
    secret_key = f"aiecs-secret-canary-{uuid.uuid4().hex}"
    client = aiecs_redis.client()
    with EchoingOpenAI(api_key=canary) as fake:
        worker = start_worker(loglevel="DEBUG", concurrency=2, env={
            "AIECS_LOG_FORMAT": "json", "OPENAI_API_KEY": canary,
            "OPENAI_BASE_URL": fake.base_url, "AIECS_SECRET_KEY": secret_key,
            "AIECS_MAX_ATTEMPTS": "1"})
        fake.script(Text(f"the key is {canary}"), Error(401, "Incorrect API key"),
                    Text("streamed", ))
        ok, _ = run(client, "openai", "chat", CHAT)
        denied, status = run(client, "openai", "chat", CHAT)
        assert status == "failed"
        streamed, _ = run(client, "openai", "chat", {**CHAT, "stream": True})
        buggy, status = run(client, "buggy", "explode", {"secret": canary}, mode="test")
        assert status == "failed"
        wait_until(lambda: worker.log().count('"message": "task ') >= 4, timeout=10,
                   message="four finish lines")
    text = worker.log()
    assert canary not in text and secret_key not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    for r in records:
        assert {"time", "level", "logger", "message", "pid"} <= r.keys(), r

    def lines(task_id: str) -> list[dict]:
        return [r for r in records if r.get("task_id") == task_id]

    # the HTTP client's DEBUG lines (the headers echo the key) carry the execution
    http = [r for r in lines(ok)
            if r["logger"].startswith(("httpx", "httpcore", "aiohttp", "openai"))]
    assert http and any("request_id" in r["message"] for r in http), lines(ok)
    for task_id, status in ((ok, "completed"), (denied, "failed"), (streamed, "completed"),
                            (buggy, "failed")):
        end = [r for r in lines(task_id) if "duration" in r]
        assert len(end) == 1, lines(task_id)
        assert end[0]["status"] == status and end[0]["duration"] >= 0
        assert end[0]["rss_mb"] > 10
        assert end[0]["user_id"] == "alice" and end[0]["step"] == 1
        assert end[0]["mode"] in ("llm", "test") and end[0]["operation"] in ("chat", "explode")
    # the provider bug's traceback is logged, redacted
    trace = [r for r in lines(buggy) if r["level"] == "ERROR"]
    assert trace and "KeyError" in trace[0]["message"] and "[redacted]" in trace[0]["message"]
    # Celery's own lines are JSON too
    assert any(r["logger"].startswith("celery") for r in records)
