"""The provider-neutral chat and embedding models: every LLM provider's ``chat`` takes a
:class:`ChatInput` and returns a :class:`ChatResult`, its ``embed`` an :class:`EmbedInput`
and an :class:`EmbedResult`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from ..models import Usage
from .modelid import model_id_problem

__all__ = [
    "ChatInput",
    "ChatMessage",
    "ChatResult",
    "EmbedInput",
    "EmbedResult",
    "ModelId",
    "NamedToolChoice",
    "ResponseFormat",
    "ToolCall",
    "ToolDefinition",
]

_NAME = r"^[A-Za-z0-9_\-]{1,64}$"


def _model_id(value: str) -> str:
    problem = model_id_problem(value)
    if problem is not None:
        raise ValueError(f"not a model id: {problem}")
    return value


#: A (namespaced) model id, never a resource path or URL: see :mod:`aiecs_core.llm.modelid`.
ModelId = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_model_id)]


class ToolCall(BaseModel):
    """A function call the model asked for. aiecs returns it; it never executes it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    """Call identifier, to answer with a ``tool`` message carrying the same id."""
    name: str
    """Function name (one of the request's ``tools``)."""
    arguments: str
    """The arguments as JSON text, exactly as the model produced them."""
    signature: str | None = Field(default=None, exclude_if=lambda value: value is None)
    """The provider's opaque signature of this call (Gemini's thought signature, base64),
    if it gave one (left out of results when it did not): send the call back unchanged in
    the assistant turn of the next request (Gemini 3 rejects a function call without it)."""


class ChatMessage(BaseModel):
    """One message of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    """``system`` instructions, ``user`` turns, ``assistant`` turns, ``tool`` results."""
    content: str | None = Field(default=None, max_length=2_000_000)
    """Text of the message (may be empty for an assistant turn that only calls tools)."""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """Assistant only: the calls the model made in this turn (to continue a conversation)."""
    tool_call_id: str | None = None
    """Tool only: the id of the call this message answers."""
    name: str | None = Field(default=None, pattern=_NAME)
    """Tool only: the function's name (required by providers that key results by name)."""

    @model_validator(mode="after")
    def _check_role(self) -> ChatMessage:
        if self.role in ("system", "user") and self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "assistant" and self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        if self.role == "tool" and (self.tool_call_id is None or self.content is None):
            raise ValueError("a tool message needs tool_call_id and content")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self


class ToolDefinition(BaseModel):
    """A function the model may call: ``{"name", "description", "parameters"}``, or the
    same in the OpenAI API's form, as users paste it: ``{"type": "function", "function":
    {"name", "description", "parameters", "strict"}}`` (the same for every provider)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON Schema of the arguments object."""
    strict: bool | None = None
    """OpenAI-wire providers: ask the server to make the arguments match ``parameters``
    exactly (sent when set); Gemini has no such switch and ignores it."""

    @model_validator(mode="before")
    @classmethod
    def _openai_form(cls, value: Any) -> Any:
        if not (isinstance(value, dict) and "function" in value):
            return value
        extra = sorted(set(value) - {"type", "function"})
        if extra:
            raise ValueError(f"a tool in the OpenAI form has only 'type' and 'function', not "
                             f"{', '.join(map(repr, extra))}")
        if value.get("type", "function") != "function":
            raise ValueError(f"tool type {value.get('type')!r} is not supported: only "
                             "'function' tools")
        if not isinstance(value["function"], dict):
            raise ValueError("'function' must be an object: {\"name\", \"description\", "
                             "\"parameters\"}")
        return value["function"]


class ResponseFormat(BaseModel):
    """Structured output: the reply must be JSON matching ``json_schema``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(default="response", pattern=_NAME)
    """Name of the schema (OpenAI-style APIs require one)."""
    json_schema: dict[str, Any]
    """JSON Schema the reply must match."""
    strict: bool = True
    """Ask the provider to enforce the schema exactly (where it can)."""


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME)
    """The function the model must call (one of the request's ``tools``)."""


class NamedToolChoice(BaseModel):
    """``tool_choice`` forcing one function, in the OpenAI API's form:
    ``{"type": "function", "function": {"name": "get_weather"}}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"] = "function"
    function: FunctionName


class ChatInput(BaseModel):
    """Input of every provider's ``chat`` operation."""

    model_config = ConfigDict(extra="forbid")

    model: ModelId
    """Model id, as the provider names it (``gpt-4o-mini``, ``gemini-2.5-flash``): an id,
    never a resource path (see :mod:`aiecs_core.llm.modelid`); the operator may limit the
    ids each provider accepts (``AIECS_MODELS``)."""
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    """The conversation, oldest first."""
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    """Sampling temperature; provider default when unset."""
    max_output_tokens: int | None = Field(default=None, ge=1)
    """Upper bound on generated tokens; provider default when unset. At most the operator's
    ceiling (``AIECS_MAX_OUTPUT_TOKENS``)."""
    response_format: ResponseFormat | None = None
    """Structured output: reply with JSON matching this schema (see ``ChatResult.parsed``)."""
    tools: list[ToolDefinition] = Field(default_factory=list, max_length=512)
    """Functions the model may call; calls are returned in ``ChatResult.tool_calls``."""
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    """Whether the model may, must not, or must call a tool (provider default: auto), or
    which one it must call (:class:`NamedToolChoice`, one of ``tools``)."""
    stream: bool = False
    """Push text to the user as stream events as it is generated."""

    @model_validator(mode="after")
    def _check_tool_choice(self) -> ChatInput:
        if isinstance(self.tool_choice, NamedToolChoice):
            name = self.tool_choice.function.name
            if name not in {tool.name for tool in self.tools}:
                raise ValueError(f"tool_choice names {name!r}, which is not one of the tools")
        return self


class ChatResult(BaseModel):
    """Result of every provider's ``chat`` operation."""

    text: str
    """The full reply text (empty when the model only called tools)."""
    finish_reason: str
    """``stop``, ``length``, ``tool_calls``, ``content_filter``, or the provider's own
    (lower-cased) reason for anything else."""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    """Function calls the model asked for (not executed)."""
    parsed: Any = None
    """With ``response_format``: the reply decoded from JSON (None if it is not JSON)."""
    model: str
    """Model as reported by the provider."""
    usage: Usage
    """Tokens used by this call (and cost, when a price is configured)."""


class EmbedInput(BaseModel):
    """Input of every provider's ``embed`` operation."""

    model_config = ConfigDict(extra="forbid")

    model: ModelId
    """Embedding model id (see :mod:`aiecs_core.llm.modelid`)."""
    texts: list[str] = Field(min_length=1, max_length=100_000)
    """Texts to embed; sent in batches of the provider's per-request limit."""
    dimensions: int | None = Field(default=None, ge=1, le=65_536)
    """Output dimensionality, for models that can shorten their vectors."""


class EmbedResult(BaseModel):
    """Result of every provider's ``embed`` operation."""

    model: str
    vectors: list[list[float]]
    """One vector per input text, in input order."""
    usage: Usage
    """Tokens of all batches together."""
