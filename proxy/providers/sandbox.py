"""The built-in sandbox provider (proxy/sandbox/), reached through its OpenAI endpoint."""
from __future__ import annotations

from proxy.providers.openai import OpenAIAdapter


class SandboxAdapter(OpenAIAdapter):
    """Speaks OpenAI's format and accepts any key."""

    max_tokens_field = "max_tokens"

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.provider.credential or 'sandbox'}"}
