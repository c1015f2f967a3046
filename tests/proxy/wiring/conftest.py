from __future__ import annotations

from types import SimpleNamespace

import pytest

from proxy.models import Deployment, ModelRoute, Provider


@pytest.fixture
def alice(personas) -> str:
    return personas.alice_key


@pytest.fixture
def kinds(db, sandbox_url, monkeypatch) -> SimpleNamespace:
    """One provider of each wire format, all the sandbox, and a route to each (`<kind>-route`)."""
    monkeypatch.setenv("TOLLGATE_PROVIDER_WIRING_KEY", "sk-wiring-upstream")
    providers = {
        "sandbox": Provider.objects.create(name="sandbox", kind="sandbox", base_url=f"{sandbox_url}/v1"),
        "openai": Provider.objects.create(name="openai-main", kind="openai", base_url=f"{sandbox_url}/v1"),
        "compatible": Provider.objects.create(name="vllm", kind="openai_compatible", base_url=f"{sandbox_url}/v1"),
        "anthropic": Provider.objects.create(name="anthropic-main", kind="anthropic", base_url=sandbox_url),
        # The google-genai SDK's way of giving it: the host alone (the adapter adds /v1beta).
        "gemini": Provider.objects.create(name="gemini-main", kind="gemini", base_url=sandbox_url),
    }
    for name, provider in providers.items():
        provider.api_key_env = "TOLLGATE_PROVIDER_WIRING_KEY"
        provider.save()
        route = ModelRoute.objects.create(model=f"{name}-route", default_max_tokens=256)
        Deployment.objects.create(route=route, provider=provider, upstream_model=f"up-{name}")
    return SimpleNamespace(**providers)
