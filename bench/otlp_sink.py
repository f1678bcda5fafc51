"""A local OTLP/HTTP receiver for the ``tracing`` scenario: takes the SDK's export
requests (``/v1/traces``, ``/v1/metrics``), answers 200 and counts the spans, so a run
shows that every task's spans arrived. It runs in the harness's own process: its CPU is
the collector's, not aiecs's, and is not counted."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Sink:
    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        self.spans = 0
        self.requests = 0
        self.bytes = 0
        lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                spans = 0
                if self.path == "/v1/traces":
                    req = ExportTraceServiceRequest.FromString(body)
                    spans = sum(len(ss.spans) for rs in req.resource_spans
                                for ss in rs.scope_spans)
                with lock:
                    sink.requests += 1
                    sink.bytes += len(body)
                    sink.spans += spans
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
