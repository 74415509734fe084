"""OpenAI-compatible gateway in front of Anthropic's legacy Text Completions API."""

__version__ = "0.1.0"
