"""OpenAI Chat Completions wire format: OpenAI itself, OpenAI-compatible servers and the sandbox."""
from __future__ import annotations

from proxy.providers.base import ProviderAdapter


class OpenAIAdapter(ProviderAdapter):
    wire_format = "openai"
    FORWARDED_HEADERS = ("accept-language",)

    def auth_headers(self) -> dict[str, str]:
        credential = self.provider.credential
        return {"authorization": f"Bearer {credential}"} if credential else {}

    def chat_url(self, *, upstream_model: str, stream: bool) -> str:
        return f"{self.provider.base_url}/chat/completions"


class OpenAICompatibleAdapter(OpenAIAdapter):
    """vLLM, Ollama, LM Studio, Azure-style proxies...: same format, key optional."""


class SandboxAdapter(OpenAIAdapter):
    """The built-in sandbox speaks OpenAI's format and accepts any key."""

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.provider.credential or 'sandbox'}"}
