"""The history database down or hung: the history routes answer 503 with the reason
within AIECS_DATABASE_TIMEOUT, never hang, and the rest of the server (the task API,
health) goes on; when the database is back, so are the routes."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from tests.history.rows import execution, fresh_engine, insert_rows
from tests.support.events import wait_until
from tests.support.postgres import PostgresServer


def _timed(server, method, path, token, body=None):
    start = time.monotonic()
    status, out = server.http(method, path, body, token=token)
    return status, out, time.monotonic() - start


def _server_pids(pg: PostgresServer) -> list[int]:
    """The postmaster and its children: each backend runs in a process group of its own
    (PostgreSQL calls setsid), so signalling the postmaster's group misses them."""
    pids = [pg.proc.pid]
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == pg.proc.pid:
                pids.append(int(stat))
    return pids


def _freeze(pg: PostgresServer, seconds: float) -> None:
    """Every process of the server stops answering for ``seconds`` (SIGSTOP)."""
    pids = _server_pids(pg)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)  # the fault itself: the database does not answer this long
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def _echo():
    return {"mode": "test", "service": "echo", "task_name": "echo", "input_data": {"text": "x"},
            "countdown": 3600}


def test_a_database_that_refuses_or_cannot_open_is_503(start_server, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for url, reason in [(f"postgresql+psycopg://postgres@127.0.0.1:{port}/x", "Operational"),
                        (f"sqlite:///{tmp_path}", "unable to open database file")]:
        server = start_server(os.environ["REDIS_URL"], env={"AIECS_DATABASE_URL": url})
        tok = server.token("u1")
        for path in ("/executions", "/usage", "/executions/t1/1", "/templates"):
            status, out, _ = _timed(server, "GET", path, tok)
            assert status == 503, out
            assert out["error"]["type"] == "database_unavailable"
            assert reason in out["error"]["message"], out
        assert server.http("GET", "/healthz")[0] == 200
        assert server.http("POST", "/tasks", _echo(), token=tok)[0] == 202


def test_a_hung_database_is_503_within_the_timeout_and_starves_nothing(start_server):
    """A paused PostgreSQL answers nothing: each request gets 503 after ~1 s; twelve at
    once (more than the database threads) leave the task API and /healthz answering."""
    pg = PostgresServer().start()
    try:
        url = pg.create_database()
        engine = fresh_engine(url)
        insert_rows(engine, [execution("u1", "t1", 1_780_000_000.0)])
        engine.dispose()
        server = start_server(os.environ["REDIS_URL"], env={
            "AIECS_DATABASE_URL": url, "AIECS_DATABASE_TIMEOUT": "1"})
        tok = server.token("u1")
        # ready once the start's migration check is done (it may take more than the
        # 1 s timeout on a loaded machine: those first requests are 503)
        page = wait_until(lambda: (lambda r: r[1] if r[0] == 200 else None)(
            server.http("GET", "/executions", token=tok)), timeout=30, message="first 200")
        assert len(page["items"]) == 1

        paused = threading.Thread(target=_freeze, args=(pg, 6))
        paused.start()
        try:
            time.sleep(0.2)  # the SIGSTOP is sent at the thread's start
            with ThreadPoolExecutor(12) as pool:
                hung = [pool.submit(_timed, server, "GET", path, tok)
                        for path in ["/executions"] * 11 + ["/templates"]]
                time.sleep(0.3)
                status, out, took = _timed(server, "POST", "/tasks", tok, _echo())
                assert status == 202 and took < 1.0, (status, out, took)
                assert _timed(server, "GET", "/healthz", None)[0] == 200
                results = [f.result() for f in hung]
            for status, out, took in results:
                assert status == 503, out
                assert "no answer within 1 s" in out["error"]["message"]
                assert took < 3.0, took  # 1 s, or 2 for those queued behind the 8 threads
        finally:
            paused.join()
        # the database answers again: so do the routes
        wait_until(lambda: server.http("GET", "/executions", token=tok)[0] == 200,
                   timeout=20, message="history routes back after the database")
    finally:
        pg.cleanup()

