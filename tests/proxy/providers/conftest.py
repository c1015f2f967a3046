from __future__ import annotations

from types import SimpleNamespace

import pytest

from proxy.models import Deployment, ModelRoute, Provider


@pytest.fixture
def kinds(db, sandbox_url, monkeypatch) -> SimpleNamespace:
    """One provider of each wire format, all served by the sandbox, and a route on each."""
    monkeypatch.setenv("TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY", "sk-upstream")
    key = {"api_key_env": "TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY"}
    providers = {
        "openai": Provider.objects.create(name="p-openai", kind="openai", base_url=f"{sandbox_url}/v1", **key),
        "anthropic": Provider.objects.create(name="p-anthropic", kind="anthropic", base_url=sandbox_url, **key),
        "gemini": Provider.objects.create(name="p-gemini", kind="gemini", base_url=f"{sandbox_url}/v1beta", **key),
    }
    for kind, provider in providers.items():
        route = ModelRoute.objects.create(model=f"via-{kind}", default_max_tokens=333)
        Deployment.objects.create(route=route, provider=provider, upstream_model=f"up-{kind}")
    return SimpleNamespace(**providers)


@pytest.fixture
def alice(personas) -> str:
    return personas.alice_key
