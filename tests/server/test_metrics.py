"""The progress server's /metrics: connected sockets, events delivered, replays served,
submissions (scraped over HTTP from a real ``aiecs serve``, events from the worker's
publisher); and, the same server running with ``AIECS_LOG_FORMAT=json``, its log: one JSON
object a line (uvicorn's lines included), the signing key on none."""

from __future__ import annotations

import asyncio
import json

from aiecs_core import TaskEvent, TaskStatus

from tests.server.helpers import Recorder, async_wait_until, uid
from tests.support.metrics import scrape, total


def test_sockets_deliveries_and_replays_are_counted(start_server, aiecs_redis):
    from aiecs_worker.store.events import RedisEventPublisher

    server = start_server(aiecs_redis.url, env={"AIECS_LOG_FORMAT": "json"})
    url = server.url + "/metrics"
    assert total(scrape(url), "aiecs_server_connected_sockets") == 0

    async def main():
        user, task = uid(), uid("t")
        pub = RedisEventPublisher(aiecs_redis.url)
        ev = {"task_id": task, "step": 1, "user_id": user, "task_name": "echo"}
        for i in range(3):
            await pub.publish(TaskEvent(type="stream", status=TaskStatus.RUNNING,
                                        delta=str(i), **ev))
        tabs = [Recorder(server, server.token(user)) for _ in range(2)]
        for tab in tabs:
            await tab.connect()
        ack = await tabs[0].subscribe(task)
        assert ack["replayed"] == 3
        s = scrape(url)
        assert total(s, "aiecs_server_connected_sockets") == 2
        assert total(s, "aiecs_server_replays_total") == 1
        assert total(s, "aiecs_server_replayed_events_total") == 3
        # one live event to the user's room: one packet per connection
        await pub.publish(TaskEvent(type="status", status=TaskStatus.COMPLETED, **ev))
        await async_wait_until(lambda: all(tab.live() for tab in tabs))
        assert total(scrape(url), "aiecs_server_events_delivered_total") == 2
        for tab in tabs:
            await tab.close()
        await pub.aclose()
        await async_wait_until(
            lambda: total(scrape(url), "aiecs_server_connected_sockets") == 0,
            message="connected sockets back to 0")

    asyncio.run(main())
    # a submission through the task API is counted by the worker that begins it (none
    # here), not where it was submitted: the server's count stays at its pre-set 0
    status, _ = server.http("POST", "/tasks", {"mode": "test", "service": "echo",
                                               "task_name": "echo", "input_data": {"text": "a"}},
                            token=server.token(uid()))
    assert status == 202
    s = scrape(url)
    assert total(s, "celery_task_executions_total", operation="echo", status="pending") == 0
    assert "aiecs_server_listener_restarts_total" in s
    assert total(s, "aiecs_process_resident_memory_bytes") > 10_000_000

    # the JSON log: a refused token and a malformed body are logged too
    assert server.http("GET", "/tasks/tnothere", token="garbage")[0] == 401
    assert server.http("POST", "/tasks", raw=b"{not json", token=server.token(uid()),
                       headers={"Content-Type": "application/json"})[0] == 400
    text = server.log()
    assert server.secret not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert {"uvicorn.error", "aiecs.server"} <= {r["logger"] for r in records}
    for r in records:
        assert {"time", "level", "logger", "message", "pid"} <= r.keys(), r
