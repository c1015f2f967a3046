"""Provider kind -> adapter class."""
from __future__ import annotations

from proxy.errors import GatewayError
from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.base import ProviderAdapter
from proxy.providers.gemini import GeminiAdapter
from proxy.providers.openai import OpenAIAdapter
from proxy.providers.openai_compatible import OpenAICompatibleAdapter
from proxy.providers.sandbox import SandboxAdapter
from proxy.routing import ProviderInfo

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    "openai": OpenAIAdapter,
    "openai_compatible": OpenAICompatibleAdapter,
    "anthropic": AnthropicAdapter,
    "gemini": GeminiAdapter,
    "sandbox": SandboxAdapter,
}


def adapter_for(provider: ProviderInfo) -> ProviderAdapter:
    cls = ADAPTERS.get(provider.kind)
    if cls is None:
        raise GatewayError(
            "upstream",
            f"Provider '{provider.name}' is of kind '{provider.kind}', which this gateway cannot call.",
            code="provider_kind_unsupported",
        )
    return cls(provider)
