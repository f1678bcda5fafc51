"""An outbox entry -> its history row: every field the row takes from the state, the
request and the terminal record's meta; redaction and caps."""

from __future__ import annotations

import json

from aiecs_core import register_secret
from aiecs_worker.history.rows import ERROR_MESSAGE_CAP, build, compact_events

SECRET = "sk-rowsecret-" + "q" * 30


def entry(**over) -> dict[str, str]:
    fields = {
        "key": "aiecs:t:alice:job.3:2:state", "status": "failed", "celery_id": "cid",
        "user_id": "alice", "task_name": "chat", "step": "2", "deliveries": "2",
        "submitted": "100.0", "eta": "110.0", "started": "112.5", "finished": "114.0",
        "queue": "fast_tasks", "owner": "host-a:123:abcd",
        "group": "aiecs:batch:alice:job",
        "request": json.dumps({"task_name": "chat", "user_id": "alice", "task_id": "job.3",
                               "step": 2, "mode": "llm", "service": "openai",
                               "input_data": {"model": "gpt-x", "prompt": SECRET + "z" * 500},
                               "template": {"name": "summarize", "version": 4}}),
        "usage": json.dumps([
            {"provider": "openai", "model": "gpt-x-2025", "input_tokens": 10,
             "output_tokens": 5, "cached_tokens": 4, "reasoning_tokens": 2, "cost": 0.25},
            {"provider": "openai", "model": "gpt-x-2025", "input_tokens": 1,
             "output_tokens": 1, "cost": None, "estimated": True}]),
        "error": json.dumps({"type": "ProviderServerError",
                             "message": f"boom {SECRET} " + "x" * 3000}),
        "result": json.dumps({"text": "y" * 500}),
        "meta": json.dumps({"worker": "host-b", "plugin": "aiecs-providers-openai",
                            "plugin_version": "1.2.3", "first_output_at": 113.0,
                            "price_version": "abc123"}),
    }
    fields.update(over)
    return fields


def test_the_row_of_a_failed_batch_item():
    register_secret(SECRET)
    rec = build("1-0", entry(), payloads=True, payload_bytes=200, now=120.0)
    r = rec.row
    assert (r["user_id"], r["task_id"], r["step"]) == ("alice", "job.3", 2)
    assert (r["batch_id"], r["workflow_id"]) == ("job", None)
    assert (r["mode"], r["service"], r["operation"]) == ("llm", "openai", "chat")
    assert r["model"] == "gpt-x-2025"  # as reported, before the requested one
    assert (r["template_name"], r["template_version"]) == ("summarize", 4)
    assert (r["worker"], r["plugin_dist"], r["plugin_version"]) == (
        "host-b", "aiecs-providers-openai", "1.2.3")
    assert r["error_type"] == "ProviderServerError"
    assert SECRET not in r["error_message"] and len(r["error_message"]) == ERROR_MESSAGE_CAP
    assert (r["created_at"], r["started_at"], r["first_output_at"], r["finished_at"]) == (
        100.0, 112.5, 113.0, 114.0)
    assert r["queue_wait_ms"] == 2500  # from the eta, not the submission
    assert r["run_ms"] == 1500
    assert (r["input_tokens"], r["output_tokens"], r["cached_tokens"],
            r["reasoning_tokens"]) == (11, 6, 4, 2)
    assert r["usage_source"] == "estimated" and r["cost"] == 0.25
    assert r["price_version"] == "abc123" and r["deliveries"] == 2
    assert r["recorded_at"] == 120.0
    p = rec.payload
    assert SECRET not in p["input_json"]
    assert json.loads(p["input_json"])["truncated"] is True
    assert len(p["input_json"].encode()) < 300
    assert json.loads(p["result_json"])["truncated"] is True


def test_no_payload_unless_opted_in_and_worker_from_the_owner():
    rec = build("1-0", entry(meta="", group="aiecs:flow:alice:job"))
    assert rec.payload is None
    assert rec.row["worker"] == "host-a"
    assert (rec.row["batch_id"], rec.row["workflow_id"]) == (None, "job")
    assert rec.row["plugin_dist"] is None and rec.row["first_output_at"] is None


def test_usage_sources_and_a_malformed_entry():
    assert build("1", entry(usage="[]")).row["usage_source"] == "unknown"
    ok = json.dumps([{"provider": "p", "model": "m", "input_tokens": 1}])
    assert build("1", entry(usage=ok)).row["usage_source"] == "reported"
    assert build("1", entry(key="junk")) is None
    assert build("1", entry(finished="")) is None


def test_event_log_compaction_merges_deltas_between_status_events():
    def e(seq, step, type_, **kw):
        return (f"{seq}-0", {b"e": json.dumps({"seq": seq, "step": step, "type": type_,
                                               **kw}).encode()})

    raw = [e(1, 1, "status", status="running"), e(2, 1, "stream", delta="a"),
           e(3, 2, "stream", delta="other step"), e(4, 1, "progress", progress=0.5),
           e(5, 1, "stream", delta="b"), e(6, 1, "status", status="completed"),
           e(7, 1, "stream", delta="late")]
    out = compact_events(raw, 1)
    assert [(x["type"], x.get("delta")) for x in out] == [
        ("status", None), ("stream", "ab"), ("progress", None), ("status", None),
        ("stream", "late")]
