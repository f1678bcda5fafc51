"""aiecs provider plugin for OpenAI (and OpenAI-compatible servers via OPENAI_BASE_URL)."""
