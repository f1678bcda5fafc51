"""The server's DEBUG log shows websocket frames, never a token in them (issue 16, row
10): websockets elides a frame's payload before logging it, which kept a token's header
and the last 22 characters of its signature out of reach of every redaction pattern."""

from __future__ import annotations

import asyncio
import os

from tests.server.helpers import Recorder, uid


def fragments(token: str, size: int = 8) -> set[str]:
    """Every ``size``-character piece of the token's signature and claims."""
    _, claims, signature = token.split(".")
    return ({signature[i:i + size] for i in range(len(signature) - size + 1)}
            | {claims[-size:]})


def test_debug_log_never_shows_a_token(start_server):
    server = start_server(os.environ["REDIS_URL"], log_level="debug")
    user = uid()
    in_auth, in_header, in_http = (server.token(user) for _ in range(3))

    async def main():
        # the token in the Socket.IO CONNECT frame, and in the websocket handshake's header
        for token, kwargs in ((in_auth, {}),
                              (None, {"auth": None,
                                      "headers": {"Authorization": f"Bearer {in_header}"}})):
            client = Recorder(server, token)
            await client.connect(**kwargs)
            assert (await client.subscribe(uid("t")))["ok"] is True
            await client.close()

    asyncio.run(main())
    assert server.http("GET", f"/tasks/{uid('t')}", token=in_http)[0] == 404
    server.stop()
    log = server.log()
    # the frames were logged (at DEBUG), only without the tokens
    assert "< TEXT '40{" in log and "[redacted]" in log, log[-3000:]
    for token in (in_auth, in_header, in_http):
        leaked = [f for f in fragments(token) if f in log]
        assert not leaked, (leaked, log[-3000:])
