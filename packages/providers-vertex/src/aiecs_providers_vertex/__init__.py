"""aiecs provider plugin for Gemini on Vertex AI, through google-genai in Vertex mode."""
