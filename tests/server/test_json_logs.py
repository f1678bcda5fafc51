"""``AIECS_LOG_FORMAT=json`` on the progress server: uvicorn's lines and ours are JSON objects,
one a line, and the signing key appears on none."""

from __future__ import annotations

import json

from tests.server.serverproc import uid, wait_until


def test_every_line_is_json_and_the_key_is_nowhere(start_server, aiecs_redis):
    server = start_server(aiecs_redis.url, env={"AIECS_LOG_FORMAT": "json"})
    token = server.token(uid())
    assert server.http("GET", "/tasks/tnothere", token=token)[0] == 404
    assert server.http("GET", "/tasks/tnothere", token=token + "x")[0] == 401
    assert server.http("POST", "/tasks", raw=b"{not json", token=token,
                       headers={"Content-Type": "application/json"})[0] == 400
    wait_until(lambda: "/tasks" in server.log(), message="the requests in the log")
    text = server.log()
    assert server.secret not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    loggers = {r["logger"] for r in records}
    assert {"uvicorn.error", "aiecs.server"} <= loggers, loggers
    for r in records:
        assert {"time", "level", "logger", "message", "pid"} <= r.keys(), r
