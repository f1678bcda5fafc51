"""The anchor: bare Celery configured like aiecs (Redis broker and backend, JSON,
acks_late, reject on worker lost, prefetch 1), with a no-op task and a chat task that calls
the local OpenAI-compatible server through the *synchronous* openai SDK (one reused client
per process). Started as ``celery -A bench.anchor_app worker``.
"""

import os

from celery import Celery

url = os.environ["CELERY_BROKER_URL"]
app = Celery("anchor", broker=url, backend=url)
app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"],
    task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
)
_client = None


@app.task(name="anchor.noop")
def noop(**kwargs):
    return {"ok": True}


@app.task(name="anchor.chat")
def chat(**kwargs):
    global _client
    if _client is None:
        from openai import OpenAI

        _client = OpenAI(api_key=os.environ["OPENAI_API_KEY"],
                         base_url=os.environ["OPENAI_BASE_URL"])
    data = kwargs["input_data"]
    reply = _client.chat.completions.create(model=data["model"], messages=data["messages"])
    return {"text": reply.choices[0].message.content}
