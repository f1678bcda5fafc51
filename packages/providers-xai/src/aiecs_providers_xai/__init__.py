"""aiecs provider plugin for xAI (Grok), through xAI's OpenAI-compatible API."""
