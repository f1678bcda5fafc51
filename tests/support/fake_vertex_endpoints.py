"""A local HTTP server speaking the REST protocol of Vertex AI endpoints (models deployed
on an endpoint), and Google's OAuth token endpoint, for google-cloud-aiplatform's REST
transport and the ``vertex/endpoint`` service.

Routes::

    POST /token                                                  service-account JWT grant
    POST /v1/projects/{p}/locations/{l}/endpoints/{e}:predict    {"instances", "parameters"}
    POST /v1/projects/{p}/locations/{l}/endpoints/{e}:rawPredict any body, as it is
    POST /v1beta1/projects/{p}/locations/{l}/endpoints/{e}/chat/completions
                                                                 OpenAI chat (JSON and SSE),
                                                                 on endpoints in ``chat_endpoints``

As Vertex does: requests need a bearer token (401 otherwise): the one issued by
``/token``, or a JWT self-signed with the service account's key (google-auth sends one
for service accounts through the aiplatform client: scope ``cloud-platform``, checked
against the key of ``write_credentials``). Another
project/location is refused (403 PERMISSION_DENIED), an unknown endpoint is a 404
NOT_FOUND, and an endpoint without the chat route answers it with a 404. ``:predict``
answers ``{"predictions": [{"echo": instance, "parameters": parameters}, ...],
"deployedModelId", "model", "modelVersionId"}``; ``:rawPredict`` answers ``{"echo":
body}`` with the ``X-Vertex-AI-Deployed-Model-Id`` / ``-Model`` headers; chat is
:class:`tests.support.fake_openai.FakeOpenAI`'s.

Scripted replies (``server.script(...)``) as the other fakes: :class:`GoogleError`
(Google's error body), ``Error`` (an OpenAI-style one), ``Hang``; for chat also ``Text``,
``ToolCalls``, ``Cut``.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from tests.support.fake_openai import FakeOpenAI, _OpenAIHandler
from tests.support.fake_vertex import _STATUS, FakeVertex, GoogleError, _VertexHandler

__all__ = ["FakeVertexEndpoints", "GoogleError"]

_PATH = re.compile(
    r"^/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/endpoints/(?P<endpoint>[^/:?]+)(?P<method>:predict|:rawPredict|/chat/completions)"
    r"(?P<query>\?.*)?$"
)


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def self_signed_jwt_ok(token: str, fake: FakeVertexEndpoints) -> bool:
    """Whether ``token`` is a JWT signed with the service account's key, for it, with the
    cloud-platform scope, not expired."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    parts = token.split(".")
    if len(parts) != 3 or fake.public_key is None:
        return False
    try:
        header, claims = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1]))
        fake.public_key.verify(_unb64(parts[2]), f"{parts[0]}.{parts[1]}".encode(),
                               padding.PKCS1v15(), hashes.SHA256())
    except (ValueError, InvalidSignature):
        return False
    return (header.get("alg") == "RS256" and claims.get("iss") == fake.client_email
            and "cloud-platform" in str(claims.get("scope", claims.get("aud", "")))
            and float(claims.get("exp", 0)) > time.time())


class _EndpointHandler(_OpenAIHandler):
    server_fake: FakeVertexEndpoints

    def _google_error(self, status: int, message: str, headers: dict | None = None,
                      details: list | None = None, google_status: str | None = None) -> None:
        error: dict[str, Any] = {"code": status, "message": message,
                                 "status": google_status or _STATUS.get(status, "UNKNOWN")}
        if details:
            error["details"] = details
        self._send_json(status, {"error": error}, headers)

    def _scripted_error(self, reply: Any) -> bool:
        if isinstance(reply, GoogleError):
            details = None
            if reply.retry_delay is not None:
                details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                            "retryDelay": reply.retry_delay}]
            self._google_error(reply.status, reply.message, reply.headers, details,
                               reply.google_status)
            return True
        return super()._scripted_error(reply)

    def route(self, body: Any) -> None:
        fake = self.server_fake
        if self.path == "/token":
            return _VertexHandler._token(self)
        token = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        if token != fake.access_token and not self_signed_jwt_ok(token, fake):
            return self._google_error(401, "Request had invalid authentication credentials.")
        with fake._lock:
            fake.bearer_tokens.add(token)
        match = _PATH.match(self.path)
        if match is None:
            return self._google_error(404, f"unknown path {self.path}")
        name = (f"projects/{match['project']}/locations/{match['location']}/endpoints/"
                f"{match['endpoint']}")
        if (match["project"], match["location"]) != (fake.project, fake.location):
            return self._google_error(
                403, f"Permission 'aiplatform.endpoints.predict' denied on resource "
                     f"'//aiplatform.googleapis.com/{name}' (or it may not exist).")
        if match["endpoint"] not in fake.endpoints:
            return self._google_error(404, f"Endpoint `{name}` not found.")
        method = match["method"]
        if method == "/chat/completions":
            if match["version"] != "v1beta1" or match["endpoint"] not in fake.chat_endpoints:
                return self._google_error(404, f"unknown path {self.path}")
            return self._chat(body)
        if match["version"] != "v1":
            return self._google_error(404, f"unknown path {self.path}")
        reply = fake._next()
        if self._scripted_error(reply):
            return None
        deployed = fake.endpoints[match["endpoint"]]
        if method == ":predict":
            return self._predict(body, deployed)
        if body is None:
            return self._google_error(400, "the deployed container expects JSON")
        self._send_json(200, {"echo": body}, {
            "X-Vertex-AI-Endpoint-Id": match["endpoint"],
            "X-Vertex-AI-Deployed-Model-Id": deployed,
            "X-Vertex-AI-Model": f"projects/{fake.project}/locations/{fake.location}"
                                 f"/models/model-of-{deployed}",
        })

    def _predict(self, body: Any, deployed: str) -> None:
        fake = self.server_fake
        instances = body.get("instances") if isinstance(body, dict) else None
        if not isinstance(instances, list) or not instances:
            return self._google_error(400, "instances must be a non-empty list")
        parameters = body.get("parameters")
        self._send_json(200, {
            "predictions": [{"echo": i, "parameters": parameters} for i in instances],
            "deployedModelId": deployed,
            "model": f"projects/{fake.project}/locations/{fake.location}"
                     f"/models/model-of-{deployed}",
            "modelVersionId": "1",
        })


class FakeVertexEndpoints(FakeVertex, FakeOpenAI):
    """Vertex AI endpoints of one project/location, behind OAuth.

    ``endpoints``: endpoint ID -> the ID of the model deployed on it; ``chat_endpoints``:
    those that offer the OpenAI-compatible chat route (a vLLM deployment)."""

    handler = _EndpointHandler

    def __init__(self, project: str = "test-project", location: str = "us-central1"):
        super().__init__(project, location)
        self.endpoints: dict[str, str] = {"1234567890": "dm-111", "4242": "dm-vllm"}
        self.chat_endpoints: set[str] = {"4242"}
        #: Every bearer token accepted (the ``/token`` one and self-signed JWTs).
        self.bearer_tokens: set[str] = set()

    @property
    def api_endpoint(self) -> str:
        """What to give as ``api_endpoint`` / ``VERTEX_ENDPOINT_BASE_URL``."""
        return f"http://127.0.0.1:{self.port}"

    def env(self, credentials: str, **extra: str) -> dict[str, str]:
        """The worker environment pointing the ``vertex/endpoint`` service here."""
        return {"VERTEX_PROJECT_ID": self.project, "VERTEX_LOCATION": self.location,
                "VERTEX_ENDPOINT_BASE_URL": self.api_endpoint,
                "VERTEX_ENDPOINT_ID": "1234567890",
                "GOOGLE_APPLICATION_CREDENTIALS": credentials, **extra}
