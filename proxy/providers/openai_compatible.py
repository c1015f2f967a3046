"""OpenAI-compatible servers (vLLM, Ollama, LM Studio, other gateways): OpenAI's format, key optional."""
from __future__ import annotations

from proxy.providers.openai import OpenAIAdapter


class OpenAICompatibleAdapter(OpenAIAdapter):
    # Most compatible servers know only the older name of the field.
    max_tokens_field = "max_tokens"
    # Chat Completions is what they share; a Responses caller is translated to it.
    responses_api = False
