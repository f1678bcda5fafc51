"""The progress anchor: plain python-socketio, as its docs set it up for emitting from
external processes (``AsyncServer`` + ``AsyncRedisManager``), with the same token check
and user rooms as aiecs and nothing else.

    BENCH_REDIS_URL=redis://... BENCH_SECRET=... uvicorn bench.plain_sio:app
"""

import os

import socketio
from aiecs_worker.server.tokens import TokenError, verify_token

sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=[],
                           client_manager=socketio.AsyncRedisManager(os.environ["BENCH_REDIS_URL"]))
app = socketio.ASGIApp(sio)
SECRET = os.environ["BENCH_SECRET"]


@sio.event
async def connect(sid, environ, auth=None):
    try:
        identity = verify_token((auth or {}).get("token"), SECRET)
    except TokenError as exc:
        raise ConnectionRefusedError(str(exc)) from None
    await sio.enter_room(sid, f"user:{identity.user_id}")
