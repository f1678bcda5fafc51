"""The OpenAI-wire logic shared by the aiecs OpenAI and xAI provider plugins.

This distribution registers nothing (it has no ``aiecs`` entry point): installing
``aiecs-providers-xai`` alone exposes the xAI service only. A provider built on it
subclasses :class:`OpenAICompatService` and sets its name, environment variables and
limits; chat (streaming, structured output, tool calls) and embeddings, the timeout and
retry policy, cancellation and error conversion come from here.
"""

from .errors import convert_error
from .service import OpenAICompatService

__all__ = ["OpenAICompatService", "convert_error"]
