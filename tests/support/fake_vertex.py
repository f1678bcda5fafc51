"""A local HTTP server speaking Vertex AI's Gemini wire protocol, and Google's OAuth
token endpoint, for google-genai in Vertex mode.

Routes (``{v}`` is the API version google-genai uses, ``v1beta1``)::

    POST /token                                        service-account JWT grant
    POST /{v}/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent
    POST ...:streamGenerateContent?alt=sse             SSE, one JSON per event
    POST ...:predict                                   text-embedding-* models
    POST ...:embedContent / :batchEmbedContents        gemini-embedding-* models

Point the provider at it with ``VERTEX_BASE_URL=server.base_url`` and
``GOOGLE_APPLICATION_CREDENTIALS=server.write_credentials(dir)`` (a service-account key
whose ``token_uri`` is this server: the real google-auth signs a JWT and exchanges it
here for the bearer token that API calls must carry).

Replies are scripted with the same objects as :mod:`tests.support.fake_openai`
(``Text``, ``ToolCalls``, ``Vectors``, ``Hang``, ``Cut``) plus :class:`GoogleError`.

As Gemini 3 does, the first function call of a reply carries a ``thoughtSignature``, and a
later request that sends that call back (in a ``model`` turn) without the same signature is
refused with a 400 (``require_signatures``). Function responses must answer the calls of
the model turn before them, all in one ``user`` turn. ``toolConfig`` is checked;
``mode: ANY`` with ``allowedFunctionNames`` makes the default reply call the first of them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.fake_openai import (
    BaseHandler,
    Cut,
    FakeHTTPServer,
    Hang,
    Text,
    ToolCalls,
    Vectors,
    vector_for,
)

__all__ = ["Cut", "FakeVertex", "GoogleError", "Hang", "Text", "ToolCalls", "Vectors"]

_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
_GOOGLE_TOKEN_AUD = "https://oauth2.googleapis.com/token"
_MODEL_PATH = re.compile(
    r"^/(?P<version>v1|v1beta1)/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
    r"/publishers/google/models/(?P<model>[^/:]+):(?P<method>[A-Za-z]+)(?P<query>\?.*)?$"
)


@dataclass
class GoogleError:
    """An HTTP error with a google.rpc.Status body."""

    status: int
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)
    retry_delay: str | None = None
    """Adds a google.rpc.RetryInfo detail with this ``retryDelay`` (e.g. ``"2s"``)."""
    google_status: str | None = None
    """The body's ``status`` (default: the usual one for ``status``)."""


def _words(text: str | None) -> int:
    return len(text.split()) if text else 0


def _b64url_json(segment: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


def _field(message: dict, name: str) -> Any:
    """A field of a proto-JSON message, which Vertex accepts in lowerCamel or snake_case
    (google-genai 3.x sends some fields in snake_case)."""
    if name in message:
        return message[name]
    return message.get("".join("_" + c.lower() if c.isupper() else c for c in name))


def _b64(value: Any) -> bytes | None:
    """A proto-JSON bytes field (base64, standard or URL-safe alphabet) decoded."""
    if not isinstance(value, str):
        return None
    return base64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_"))


def _call_key(call: dict) -> str:
    return json.dumps([call.get("name"), call.get("args") or {}], sort_keys=True)


def _check_generate(body: Any, signatures: dict[str, str] | None = None) -> str | None:
    """Why Vertex would reject this generateContent body (None: fine). ``signatures``: the
    thought signature issued with each function call (by :func:`_call_key`)."""
    if not isinstance(body, dict):
        return "body must be a JSON object"
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "contents is required"
    open_calls = 0  # function calls of the last model turn, still to be answered
    for i, content in enumerate(contents):
        if content.get("role") not in ("user", "model"):
            return f"contents[{i}].role must be user or model"
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"contents[{i}].parts must not be empty"
        for part in parts:
            kinds = {"text", "functionCall", "functionResponse"} & set(part)
            if len(kinds) != 1:
                return f"contents[{i}] has a part with {sorted(kinds) or 'no data'}"
            call = part.get("functionCall")
            if call is not None and signatures is not None:
                expected = signatures.get(_call_key(call))
                if expected is not None and _b64(_field(part, "thoughtSignature")) != _b64(
                    expected
                ):
                    return (
                        "Function call is missing a thought_signature in functionCall parts. "
                        f"Additional data, function call `{call.get('name')}` , position {i}."
                    )
        responses = sum("functionResponse" in p for p in parts)
        if responses and responses != open_calls:
            return (
                "Please ensure that the number of function response parts is equal to the "
                "number of function call parts of the function call turn."
            )
        open_calls = sum("functionCall" in p for p in parts) if content["role"] == "model" else 0
    allowed = {"temperature", "maxOutputTokens", "responseMimeType", "responseJsonSchema"}
    unknown = set(body.get("generationConfig") or {}) - allowed
    if unknown:
        return f"unexpected generationConfig fields {sorted(unknown)}"
    config = body.get("generationConfig") or {}
    if "responseJsonSchema" in config and config.get("responseMimeType") != "application/json":
        return "responseJsonSchema needs responseMimeType application/json"
    names = set()
    for tool in body.get("tools") or []:
        for decl in tool.get("functionDeclarations") or []:
            if "name" not in decl:
                return "functionDeclarations[].name is required"
            names.add(decl["name"])
    calling = _field(body.get("toolConfig") or {}, "functionCallingConfig")
    if calling is not None:
        if calling.get("mode") not in ("AUTO", "ANY", "NONE", "VALIDATED"):
            return "functionCallingConfig.mode is invalid"
        allowed = _field(calling, "allowedFunctionNames")
        if allowed is not None and (
            calling["mode"] not in ("ANY", "VALIDATED") or not set(allowed) <= names
        ):
            return "allowedFunctionNames needs mode ANY and names of declared functions"
    return None


class _VertexHandler(BaseHandler):
    server_fake: FakeVertex
    sse_separator = "\r\n\r\n"

    def _error(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        details: list | None = None,
        google_status: str | None = None,
    ) -> None:
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": google_status or _STATUS.get(status, "UNKNOWN"),
        }
        if details:
            error["details"] = details
        self._send_json(status, {"error": error}, headers)

    def route(self, body: Any) -> None:
        fake = self.server_fake
        if self.path == "/token":
            return self._token()
        if self.headers.get("authorization") != f"Bearer {fake.access_token}":
            return self._error(401, "Request had invalid authentication credentials.")
        match = _MODEL_PATH.match(self.path)
        if match is None:
            return self._error(404, f"unknown path {self.path}")
        if (match["project"], match["location"]) != (fake.project, fake.location):
            return self._error(403, f"permission denied on project {match['project']}")
        method, model = match["method"], match["model"]
        if method == "generateContent":
            return self._generate(body, model, stream=False)
        if method == "streamGenerateContent":
            if match["query"] != "?alt=sse":
                return self._error(400, "this fake streams with alt=sse only")
            return self._generate(body, model, stream=True)
        if method in ("predict", "embedContent", "batchEmbedContents"):
            return self._embed(body, model, method)
        return self._error(404, f"unknown method {method}")

    def _token(self) -> None:
        form = urllib.parse.parse_qs(self.raw_body.decode())
        grant = form.get("grant_type", [""])[0]
        assertion = form.get("assertion", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" or assertion.count(".") != 2:
            return self._send_json(400, {"error": "invalid_grant"})
        claims = _b64url_json(assertion.split(".")[1])
        fake = self.server_fake
        # google-auth signs with Google's token audience whatever the token_uri is.
        if claims.get("iss") != fake.client_email or claims.get("aud") != _GOOGLE_TOKEN_AUD:
            return self._send_json(
                400, {"error": "invalid_grant", "error_description": "bad iss/aud"}
            )
        with fake._lock:
            fake.token_grants += 1
        self._send_json(
            200, {"access_token": fake.access_token, "expires_in": 3600, "token_type": "Bearer"}
        )

    def _scripted_error(self, reply: Any) -> bool:
        if isinstance(reply, GoogleError):
            details = None
            if reply.retry_delay is not None:
                details = [
                    {
                        "@type": "type.googleapis.com/google.rpc.RetryInfo",
                        "retryDelay": reply.retry_delay,
                    }
                ]
            self._error(reply.status, reply.message, reply.headers, details,
                        reply.google_status)
            return True
        if isinstance(reply, Hang) and reply.after_chunks is None:
            self._hang()
            return True
        return False

    def _response(
        self, parts: list[dict], finish: str | None, model: str, usage: dict | None
    ) -> dict:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        out: dict[str, Any] = {
            "candidates": [candidate],
            "modelVersion": f"{model}-001",
            "responseId": "fake-response",
        }
        if usage is not None:
            out["usageMetadata"] = usage
        return out

    def _calls(self, calls: list[tuple[str, str]]) -> list[dict]:
        """functionCall parts, the first signed (and its signature remembered)."""
        fake = self.server_fake
        parts: list[dict] = []
        for i, (name, args) in enumerate(calls):
            part: dict[str, Any] = {"functionCall": {"name": name, "args": json.loads(args)}}
            if i == 0:
                with fake._lock:
                    fake.signatures_issued += 1
                    raw = hashlib.sha256(f"sig-{fake.signatures_issued}".encode()).digest()
                    signature = base64.b64encode(raw).decode()
                    fake.signatures[_call_key(part["functionCall"])] = signature
                part["thoughtSignature"] = signature
            parts.append(part)
        return parts

    def _default_reply(self, body: dict) -> Any:
        calling = _field(body.get("toolConfig") or {}, "functionCallingConfig") or {}
        allowed = _field(calling, "allowedFunctionNames")
        if calling.get("mode") == "ANY" and allowed:
            return ToolCalls([(allowed[0], "{}")])
        last = body["contents"][-1]["parts"]
        if any("functionResponse" in p for p in last):
            return Text("tool results: " + " ".join(
                json.dumps(p["functionResponse"]["response"], sort_keys=True)
                for p in last if "functionResponse" in p))
        text = next(
            p.get("text")
            for c in reversed(body["contents"])
            if c["role"] == "user"
            for p in c["parts"]
            if "text" in p
        )
        return Text(f"echo: {text}")

    def _generate(self, body: Any, model: str, *, stream: bool) -> None:
        fake = self.server_fake
        with fake._lock:
            signatures = dict(fake.signatures) if fake.require_signatures else None
        problem = _check_generate(body, signatures)
        if problem is not None:
            return self._error(400, problem)
        reply = self.server_fake._next()
        if self._scripted_error(reply):
            return None
        prompt = sum(_words(p.get("text")) for c in body["contents"] for p in c["parts"])
        prompt += sum(
            _words(p.get("text")) for p in (body.get("systemInstruction") or {}).get("parts", [])
        )
        if reply is None:
            reply = self._default_reply(body)

        def usage(output: int) -> dict:
            return {
                "promptTokenCount": prompt,
                "candidatesTokenCount": output,
                "totalTokenCount": prompt + output,
                **fake.usage_extra,
            }

        if isinstance(reply, ToolCalls):
            parts = self._calls(reply.calls)
            if reply.text:
                parts.insert(0, {"text": reply.text})
            output = sum(_words(a) for _, a in reply.calls)
            if not stream:
                return self._send_json(200, self._response(parts, "STOP", model, usage(output)))
            self._start_sse()
            self._sse(self._response(parts, "STOP", model, usage(output)))
            return self._end_chunked()
        if not stream:
            assert isinstance(reply, Text), reply
            finish = {"stop": "STOP", "length": "MAX_TOKENS"}.get(
                reply.finish_reason, reply.finish_reason
            )
            return self._send_json(
                200,
                self._response(
                    [{"text": reply.text}],
                    finish,
                    model,
                    usage(_words(reply.text)) if reply.usage else None,
                ),
            )
        self._start_sse()
        if isinstance(reply, Cut):
            for i, word in enumerate(reply.text.split()[: reply.after_chunks]):
                self._sse(
                    self._response(
                        [{"text": word if i == 0 else " " + word}], None, model, usage(i + 1)
                    )
                )
            return self._drop()
        if isinstance(reply, Hang):
            for i, word in enumerate(["this", "stream", "will", "hang"][: reply.after_chunks]):
                self._sse(
                    self._response([{"text": word if i == 0 else " " + word}], None, model, None)
                )
            return self._hang()
        assert isinstance(reply, Text), reply
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            if reply.delay:
                time.sleep(reply.delay)
            last = i == len(words) - 1
            self._sse(
                self._response(
                    [{"text": word if i == 0 else " " + word}],
                    "STOP" if last else None,
                    model,
                    usage(i + 1) if reply.usage else None,
                )
            )
        self._end_chunked()

    def _embed(self, body: Any, model: str, method: str) -> None:
        if not isinstance(body, dict):
            return self._error(400, "body must be a JSON object")
        if method == "predict":
            instances = body.get("instances")
            if not isinstance(instances, list) or not instances:
                return self._error(400, "instances is required")
            texts = [inst.get("content") for inst in instances]
            if len(texts) > 250:
                return self._error(400, "at most 250 instances per request")
            dims = (body.get("parameters") or {}).get("outputDimensionality")
        elif method == "embedContent":
            texts = ["".join(p.get("text", "") for p in body["content"]["parts"])]
            dims = (body.get("embedContentConfig") or {}).get("outputDimensionality")
        else:
            requests = body.get("requests") or []
            texts = ["".join(p.get("text", "") for p in r["content"]["parts"]) for r in requests]
            dims = next(
                ((r.get("embedContentConfig") or {}).get("outputDimensionality") for r in requests),
                None,
            )
            if len(texts) > 100:
                return self._error(400, "at most 100 requests per batch")
        if not all(isinstance(t, str) for t in texts):
            return self._error(400, "every instance needs text content")
        reply = self.server_fake._next()
        if self._scripted_error(reply):
            return None
        dims = int(dims or 8)
        vectors = (
            reply.vectors if isinstance(reply, Vectors) else [vector_for(t, dims) for t in texts]
        )
        if method == "predict":
            return self._send_json(
                200,
                {
                    "predictions": [
                        {
                            "embeddings": {
                                "values": v,
                                "statistics": {"token_count": _words(t), "truncated": False},
                            }
                        }
                        for v, t in zip(vectors, texts, strict=False)
                    ],
                    "metadata": {"billableCharacterCount": sum(len(t) for t in texts)},
                },
            )
        usage = {"promptTokenCount": sum(_words(t) for t in texts)}
        if method == "embedContent":
            return self._send_json(
                200, {"embedding": {"values": vectors[0]}, "usageMetadata": usage}
            )
        return self._send_json(
            200, {"embeddings": [{"values": v} for v in vectors], "usageMetadata": usage}
        )


class FakeVertex(FakeHTTPServer):
    """Vertex AI's Gemini endpoints for one project/location, behind OAuth."""

    handler = _VertexHandler

    def __init__(self, project: str = "test-project", location: str = "us-central1"):
        super().__init__()
        self.project = project
        self.location = location
        self.access_token = "ya29.fake-access-token"
        self.client_email = "aiecs-test@test-project.iam.gserviceaccount.com"
        #: Access tokens issued by /token.
        self.token_grants = 0
        #: Refuse a function call sent back without the thought signature it came with.
        self.require_signatures = True
        #: The signature issued with each function call, by name and arguments.
        self.signatures: dict[str, str] = {}
        self.signatures_issued = 0
        #: The public key of the last service-account key file written.
        self.public_key: Any = None
        #: More usageMetadata fields of every reply (thoughtsTokenCount, ...).
        self.usage_extra: dict[str, int] = {}

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def api_requests(self) -> list:
        with self._lock:
            return [r for r in self.requests if r.path != "/token"]

    def write_credentials(self, directory: Path) -> str:
        """Write a service-account key file whose token endpoint is this server."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = key.public_key()  # checks self-signed JWTs (fake_vertex_endpoints)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        path = Path(directory) / "service-account.json"
        path.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": self.project,
                    "private_key_id": "fake-key-id",
                    "private_key": pem,
                    "client_email": self.client_email,
                    "client_id": "1234567890",
                    "token_uri": self.token_uri,
                }
            )
        )
        return str(path)
