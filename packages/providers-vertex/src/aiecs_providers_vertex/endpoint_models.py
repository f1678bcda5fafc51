"""Inputs and results of the ``vertex/endpoint`` service (models deployed on Vertex AI
endpoints)."""

from __future__ import annotations

from typing import Any

from aiecs_core.llm import ChatInput
from pydantic import BaseModel, ConfigDict, Field, JsonValue

__all__ = [
    "ENDPOINT_ID_PATTERN",
    "EndpointChatInput",
    "PredictInput",
    "PredictResult",
    "RawPredictInput",
    "RawPredictResult",
]

#: An endpoint ID: numeric (``1234567890``) or a user-chosen one (``my-endpoint``).
ENDPOINT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"

_ENDPOINT_DOC = (
    "The endpoint's ID, in VERTEX_PROJECT_ID / VERTEX_LOCATION (default: VERTEX_ENDPOINT_ID)."
)


class _EndpointRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(default=None, pattern=ENDPOINT_ID_PATTERN,
                                 description=_ENDPOINT_DOC)
    """The endpoint's ID, in ``VERTEX_PROJECT_ID`` / ``VERTEX_LOCATION`` (default:
    ``VERTEX_ENDPOINT_ID``)."""


class PredictInput(_EndpointRef):
    """``Endpoint.predict``: instances in the deployed model's input schema."""

    instances: list[JsonValue] = Field(min_length=1, max_length=10_000)
    """The inputs, one per prediction (the schema is the deployed model's)."""
    parameters: dict[str, JsonValue] | None = None
    """Parameters that govern the prediction (the deployed model's schema)."""


class PredictResult(BaseModel):
    """The predictions of an endpoint."""

    endpoint: str
    """The endpoint's resource name."""
    predictions: list[Any]
    """One prediction per instance. Numbers come back as floats (protobuf ``Value``)."""
    deployed_model_id: str
    """The deployed model that served the request."""
    model: str | None = None
    """The resource name of that deployed model's Model."""
    model_version_id: str | None = None
    metadata: Any = None
    """Request-level metadata the model returned, if any."""


class RawPredictInput(_EndpointRef):
    """``:rawPredict``: any JSON body, sent as it is to the deployed model's container."""

    body: JsonValue
    """The request body (the container's own format, e.g. ``{"instances": [...]}`` or
    ``{"prompt": ...}``)."""


class RawPredictResult(BaseModel):
    """An endpoint's raw response."""

    endpoint: str
    """The endpoint's resource name."""
    response: Any
    """The container's JSON response, as it is."""
    deployed_model_id: str | None = None
    """``X-Vertex-AI-Deployed-Model-Id`` of the response."""
    model: str | None = None
    """``X-Vertex-AI-Model`` of the response (the Model's resource name)."""
    model_version_id: str | None = None
    """``X-Vertex-AI-Model-Version-Id`` of the response."""


class EndpointChatInput(ChatInput):
    """:class:`aiecs_core.llm.ChatInput`, plus the endpoint. ``model`` is sent as it is
    (a vLLM deployment checks it against the model it serves)."""

    endpoint: str | None = Field(default=None, pattern=ENDPOINT_ID_PATTERN,
                                 description=_ENDPOINT_DOC)
    """The endpoint's ID (default: ``VERTEX_ENDPOINT_ID``)."""
