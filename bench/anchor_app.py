"""The Celery anchor: bare Celery configured like aiecs (Redis broker and backend, JSON,
acks_late, reject on worker lost, prefetch 1), with a no-op task and a chat task that calls
the local OpenAI-compatible server through the *synchronous* openai SDK (one reused client
per process; on the gevent pool, one client shared by the greenlets, its connection pool
raised to the pool's concurrency). Started as ``celery -A bench.anchor_app worker``.
"""

import os

from celery import Celery

url = os.environ["CELERY_BROKER_URL"]
app = Celery("anchor", broker=url, backend=url)
app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"],
    task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
    # kombu's Redis channel keeps at most 10 connections (broker_transport_options'
    # max_connections): on the gevent pool at -c500, acks then fail ("Too many
    # connections"); the result backend's pool likewise. Raised as a gevent user must.
    broker_transport_options={"max_connections": 1000}, redis_max_connections=1000,
    broker_pool_limit=1000,
)
_client = None


@app.task(name="anchor.noop")
def noop(**kwargs):
    return {"ok": True}


@app.task(name="anchor.chat")
def chat(**kwargs):
    global _client
    if _client is None:
        import httpx2
        from openai import DefaultHttpxClient, OpenAI

        # the SDK keeps 100 idle connections: 500 greenlets would reconnect
        limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=1000)
        _client = OpenAI(api_key=os.environ["OPENAI_API_KEY"],
                         base_url=os.environ["OPENAI_BASE_URL"],
                         http_client=DefaultHttpxClient(limits=limits))
    data = kwargs["input_data"]
    reply = _client.chat.completions.create(model=data["model"], messages=data["messages"])
    return {"text": reply.choices[0].message.content}
