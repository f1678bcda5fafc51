"""A tiny OTLP/HTTP collector for the tracing tests: a real HTTP server on a free port that
takes the SDK's ``POST /v1/traces`` and ``POST /v1/metrics`` export requests (protobuf),
decodes them with opentelemetry-proto and keeps the spans and metric points.

``OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint`` points a process's exporters at it.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["Collector", "Point", "Span"]

#: opentelemetry-proto's Span.SpanKind numbers
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER",
         5: "CONSUMER"}


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status_code: int
    service: str
    pid: int | None


@dataclass
class Point:
    name: str
    service: str
    attributes: dict[str, Any]
    count: int
    sum: float
    bounds: list[float]


@dataclass
class Collector:
    spans: list[Span] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path == "/v1/traces":
                    collector._traces(body)
                elif self.path == "/v1/metrics":
                    collector._metrics(body)
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- decoding ---------------------------------------------------------------------------
    def _traces(self, body: bytes) -> None:
        req = ExportTraceServiceRequest.FromString(body)
        out = []
        for rs in req.resource_spans:
            res = _attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append(Span(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(), name=s.name, kind=KINDS[s.kind],
                        attributes=_attrs(s.attributes),
                        events=[(e.name, _attrs(e.attributes)) for e in s.events],
                        status_code=s.status.code, service=res.get("service.name", ""),
                        pid=res.get("process.pid")))
        with self._lock:
            self.requests += 1
            self.spans.extend(out)

    def _metrics(self, body: bytes) -> None:
        req = ExportMetricsServiceRequest.FromString(body)
        out = []
        for rm in req.resource_metrics:
            service = _attrs(rm.resource.attributes).get("service.name", "")
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.WhichOneof("data") != "histogram":
                        continue
                    for p in m.histogram.data_points:
                        out.append(Point(m.name, service, _attrs(p.attributes), p.count, p.sum,
                                         list(p.explicit_bounds)))
        with self._lock:
            self.requests += 1
            self.points.extend(out)

    # -- waiting ----------------------------------------------------------------------------
    def wait(self, ready: Callable[[list[Span]], Any], timeout: float = 30.0,
             what: str = "spans") -> Any:
        """Poll ``ready(spans)`` until it returns something truthy (returned)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            got = ready(spans)
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not exported within {timeout}s; got: "
                                     + "\n".join(f"{s.service} {s.kind} {s.name} "
                                                 f"{s.trace_id[:8]}" for s in spans))
            time.sleep(0.05)

    def wait_points(self, ready: Callable[[list[Point]], Any], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                points = list(self.points)
            got = ready(points)
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"metrics not exported within {timeout}s; got "
                                     f"{[(p.name, p.attributes) for p in points]}")
            time.sleep(0.05)
