"""OpenTelemetry traces and GenAI metrics (``AIECS_TRACING=1``, the ``[tracing]`` extra).

One trace per submission: the server's ``POST /tasks`` span (or the caller's own span
around ``.delay()``), a ``send {queue}`` span whose context travels in the Celery
message's headers (W3C ``traceparent``), the worker's ``process {queue}`` span, one
``{operation} {model}`` span per provider attempt (the GenAI semantic conventions:
``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.*``) and the ``aiecs.terminal`` event on the
execution span. Metrics: ``gen_ai.client.operation.duration`` and
``gen_ai.client.token.usage``. See docs/operations.md, "Tracing".

Off (the default), :func:`install` is never called: every hook below is one test of a
module flag and nothing of OpenTelemetry is imported by this module. On, the SDK is set
up once per process (per pid: a prefork child builds its own after the fork, its batch
processor's thread is its own) and reads the standard variables itself
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``, ...).

Never in an attribute: prompts, inputs, outputs, user ids, secrets. Error messages are
not recorded either: a span carries the error's type (``error.type``).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Any

__all__ = ["TracingMiddleware", "carrier", "execution", "install", "provider_call",
           "resumed", "setup", "shutdown", "terminal"]

#: Set by :func:`install` (AIECS_TRACING=1); every hook returns at once while it is False.
_on = False
_lock = threading.Lock()
_state: _Tracing | None = None

#: ``gen_ai.provider.name`` of our provider names (the convention's well-known values).
PROVIDER_NAMES = {"openai": "openai", "xai": "x_ai", "vertex": "gcp.vertex_ai",
                  "vertex-endpoint": "gcp.vertex_ai"}
#: ``gen_ai.operation.name`` of our operation names (others keep their own name).
OPERATION_NAMES = {"chat": "chat", "embed": "embeddings"}
#: The conventions' advised bucket boundaries.
DURATION_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24,
                    20.48, 40.96, 81.92]
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864]
#: Terminal statuses that mark the execution span as an error.
ERROR_STATUSES = frozenset({"failed", "timed_out"})


class _Tracing:
    """This process's providers, tracer and instruments."""

    def __init__(self, service: str) -> None:
        # deferred: only a process with AIECS_TRACING=1 imports the SDK (the extra)
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.pid = os.getpid()
        resource = Resource.create({})  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: service}))
        # which process (a prefork child's own pid: its set-up ran after the fork)
        resource = resource.merge(Resource({"process.pid": self.pid}))
        self.tracer_provider = TracerProvider(resource=resource)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())])
        # the process's global providers too, unless the application set its own
        if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
            trace.set_tracer_provider(self.tracer_provider)
        self.trace = trace
        self.tracer = self.tracer_provider.get_tracer("aiecs")
        meter = self.meter_provider.get_meter("aiecs")
        self.duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)
        del metrics

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()  # flushes the spans still batched
        self.meter_provider.shutdown()


# -- set-up -----------------------------------------------------------------------------------
def install() -> None:
    """Turn tracing on in this process (AIECS_TRACING=1; called by ``create_app``): the
    Celery publish hook that starts the ``send`` span and writes its context into the
    message. The SDK itself is set up on first use, or by :func:`setup`."""
    global _on
    if _on:
        return
    from celery import signals

    signals.before_task_publish.connect(_on_publish, weak=False)
    _on = True


def setup(service: str = "aiecs") -> None:
    """Set up the SDK in this process now (a prefork child in ``worker_process_init``:
    its exporter thread must start after the fork); nothing when tracing is off."""
    if _on:
        _tracing(service)


def shutdown() -> None:
    """Export what is batched and stop this process's exporters."""
    global _state
    with _lock:
        state, _state = _state, None
    if state is not None and state.pid == os.getpid():
        state.shutdown()


def _tracing(service: str = "aiecs") -> _Tracing:
    global _state
    state = _state
    if state is None or state.pid != os.getpid():
        with _lock:
            if _state is None or _state.pid != os.getpid():
                _state = _Tracing(service)
            state = _state
    return state


# -- the hooks --------------------------------------------------------------------------------
def _on_publish(sender: Any = None, headers: dict[str, Any] | None = None,
                routing_key: str | None = None, **_: Any) -> None:
    """Celery's ``before_task_publish``: a ``send`` span, its context in the headers."""
    if headers is None:
        return
    from opentelemetry import propagate

    t = _tracing()
    queue = routing_key or ""
    span = t.tracer.start_span(
        f"send {queue}".strip(), kind=t.trace.SpanKind.PRODUCER,
        attributes={"messaging.operation.type": "send", "messaging.operation.name": "send",
                    "messaging.destination.name": queue,
                    "messaging.message.id": str(headers.get("id") or ""),
                    "aiecs.celery_task": str(sender or "")})
    try:
        propagate.inject(headers, context=t.trace.set_span_in_context(span))
    finally:
        span.end()


def carrier() -> str:
    """The current trace context as a W3C carrier (JSON: ``traceparent``, ``tracestate``),
    for an execution held in Redis instead of sent (see aiecs_worker.store.hold): whoever
    releases it later sends its message in this context (:func:`resumed`), so its trace
    goes on from the submission. "" when tracing is off or no span is current."""
    if not _on:
        return ""
    from opentelemetry import propagate

    out: dict[str, str] = {}
    propagate.inject(out)
    return json.dumps(out, separators=(",", ":")) if out else ""


def resumed(stored: str | bytes | None) -> contextlib.AbstractContextManager[Any]:
    """Make the context :func:`carrier` stored current (its ``send`` span's parent) while
    a released execution's message is published; nothing when tracing is off or there is
    none (or it does not parse)."""
    if not _on or not stored:
        return contextlib.nullcontext()
    return _resumed(stored)


@contextlib.contextmanager
def _resumed(stored: str | bytes) -> Any:
    from opentelemetry import context, propagate

    try:
        values = json.loads(stored)
    except ValueError:
        values = None
    if not isinstance(values, dict):
        yield
        return
    token = context.attach(propagate.extract(
        {k: v for k, v in values.items() if isinstance(v, str)}))
    try:
        yield
    finally:
        context.detach(token)


def execution(request: Any, task: str, queue: str) -> contextlib.AbstractContextManager[Any]:
    """The worker's ``process {queue}`` span around one execution, the child of the
    ``send`` span whose context came in the message (``request`` is Celery's
    ``task.request``: the message's headers are its attributes)."""
    if not _on:
        return contextlib.nullcontext()
    return _execution(request, task, queue)


@contextlib.contextmanager
def _execution(request: Any, task: str, queue: str) -> Any:
    from opentelemetry import propagate

    t = _tracing("aiecs-worker")
    carrier = {k: v for k in ("traceparent", "tracestate")
               if isinstance(v := getattr(request, k, None), str)}
    kwargs = request.kwargs if isinstance(getattr(request, "kwargs", None), dict) else {}
    attributes: dict[str, str | int] = {
        "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": queue, "messaging.message.id": str(request.id or ""),
        "aiecs.celery_task": task}
    for key in ("task_name", "mode", "service", "task_id", "step"):
        value = kwargs.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            attributes[f"aiecs.{key}"] = value if isinstance(value, int) else value[:200]
    with t.tracer.start_as_current_span(
            f"process {queue}".strip(), context=propagate.extract(carrier),
            kind=t.trace.SpanKind.CONSUMER, attributes=attributes,
            record_exception=False, set_status_on_exception=False) as span:
        try:
            yield
        except BaseException as exc:  # the type only: a message may quote user content
            span.set_attribute("error.type", type(exc).__name__)
            raise


async def provider_call(instance: Any, operation: str, data: Any, ctx: Any, call: Any) -> Any:
    """Await ``call`` (one attempt of ``operation`` on a service ``instance``) inside a
    GenAI client span, and record its duration and token usage."""
    if not _on:
        return await call
    t = _tracing()
    cls = type(instance)
    ours = getattr(cls, "provider", None) or getattr(cls, "name", "") or ""
    provider = PROVIDER_NAMES.get(ours, ours)
    op = OPERATION_NAMES.get(operation, operation)
    model = getattr(data, "model", None)
    attributes: dict[str, Any] = {"gen_ai.operation.name": op, "gen_ai.provider.name": provider,
                                  "gen_ai.system": provider}  # (semconv <= 1.36)
    if isinstance(model, str) and model:
        attributes["gen_ai.request.model"] = model
    recorded = len(ctx.usage)
    t0 = time.monotonic()
    error_type = None
    with t.tracer.start_as_current_span(
            f"{op} {model}" if isinstance(model, str) and model else op,
            kind=t.trace.SpanKind.CLIENT, attributes=attributes,
            record_exception=False, set_status_on_exception=False) as span:
        try:
            return await call
        except BaseException as exc:
            error_type = type(exc).__name__
            span.set_attribute("error.type", error_type)
            span.set_status(t.trace.StatusCode.ERROR)  # no description: messages stay out
            raise
        finally:
            _after_call(t, span, attributes, ctx.usage[recorded:], time.monotonic() - t0,
                        error_type)


def _after_call(t: _Tracing, span: Any, attributes: dict[str, Any], usages: list[Any],
                seconds: float, error_type: str | None) -> None:
    metric = {k: v for k, v in attributes.items() if k != "gen_ai.system"}
    if usages:
        metric["gen_ai.response.model"] = usages[-1].model
        span.set_attribute("gen_ai.response.model", usages[-1].model)
        tokens_in = sum(u.input_tokens for u in usages)
        tokens_out = sum(u.output_tokens for u in usages)
        span.set_attribute("gen_ai.usage.input_tokens", tokens_in)
        span.set_attribute("gen_ai.usage.output_tokens", tokens_out)
        t.tokens.record(tokens_in, {**metric, "gen_ai.token.type": "input"})
        t.tokens.record(tokens_out, {**metric, "gen_ai.token.type": "output"})
    if error_type is not None:
        metric["error.type"] = error_type
    t.duration.record(seconds, metric)


def terminal(status: str, error: Any = None) -> None:
    """The execution's terminal event (its status, the error's type) on the current
    (execution) span; failed and timed_out mark the span as an error."""
    if not _on:
        return
    t = _tracing()
    span = t.trace.get_current_span()
    attributes = {"aiecs.status": status}
    if error is not None:
        attributes["error.type"] = str(getattr(error, "type", None) or type(error).__name__)
    span.add_event("aiecs.terminal", attributes)
    span.set_attribute("aiecs.status", status)
    if status in ERROR_STATUSES:
        span.set_attribute("error.type", attributes.get("error.type", status))
        span.set_status(t.trace.StatusCode.ERROR)


class TracingMiddleware:
    """ASGI: a ``SERVER`` span per HTTP request, named by its route's template
    (``POST /tasks``), continuing a caller's ``traceparent``. No query, no body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not _on:
            await self.app(scope, receive, send)
            return
        from opentelemetry import propagate

        t = _tracing("aiecs-server")
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"traceparent", b"tracestate")}
        method = scope["method"]
        status: list[int] = []

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        with t.tracer.start_as_current_span(
                method, context=propagate.extract(carrier), kind=t.trace.SpanKind.SERVER,
                attributes={"http.request.method": method},
                record_exception=False, set_status_on_exception=False) as span:
            try:
                await self.app(scope, receive, send_status)
            except BaseException as exc:
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(t.trace.StatusCode.ERROR)
                raise
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                if status:
                    span.set_attribute("http.response.status_code", status[0])
                    if status[0] >= 500:
                        span.set_status(t.trace.StatusCode.ERROR)
