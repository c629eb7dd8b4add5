"""Talking to OpenAI-compatible chat servers.

- :mod:`reasondistill.api.client`: :class:`~reasondistill.api.client.ChatClient`, a small,
  thread-safe, retrying client for ``POST {base_url}/chat/completions`` (standard library only);
  used by the LLM judges and the API-teacher pipeline.
- :mod:`reasondistill.api.serve`: a local OpenAI-compatible server for a Hugging Face causal
  LM (``python -m reasondistill.api.serve --model embedded:teacher --port 8000``).

The server module imports torch and transformers; import it explicitly when you need it.
"""

from .client import APIError, ChatClient

__all__ = ["APIError", "ChatClient"]
