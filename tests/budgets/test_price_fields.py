"""Pass-through fields that change price or retention are removed unless the route allows them (issue #16),
and nothing the coding agents send by default is refused or broken."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from proxy.models import Deployment, ModelRoute, Provider
from proxy.pricefields import price_fields_strip
from tests.proxy.client import call, chat

pytestmark = pytest.mark.django_db

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
HELLO = [{"role": "user", "content": "hello"}]


def _upstream(sandbox_url: str) -> dict:
    return httpx.get(f"{sandbox_url}/_sandbox/requests", params={"limit": 1}).json()["requests"][0]


def _claude_code_beta() -> str:
    headers = json.loads((FIXTURES / "claude_code_request.json").read_text())["headers"]
    return next(v for k, v in headers.items() if k.lower() == "anthropic-beta")


def test_it_strips_dear_tiers_stored_completions_and_priced_betas_only():
    payload = {"service_tier": "priority", "store": True}
    headers = {"anthropic-beta": "claude-code-20250219,context-1m-2025-08-07,code-execution-2025-05-22"}
    assert price_fields_strip("openai", payload, headers) == ["service_tier=priority", "store=true"]
    assert payload == {}
    for tier in ("auto", "default"):
        assert price_fields_strip("openai", {"service_tier": tier, "store": False}, {}) == []
    assert price_fields_strip("responses", {"service_tier": "flex"}, {}) == ["service_tier=flex"]
    assert price_fields_strip("anthropic", {}, headers) == ["anthropic-beta=context-1m-2025-08-07",
                                                            "anthropic-beta=code-execution-2025-05-22"]
    assert headers == {"anthropic-beta": "claude-code-20250219"}
    only = {"anthropic-beta": "web-search-2025-03-05"}
    price_fields_strip("anthropic", {}, only)
    assert only == {}


def test_an_openai_caller_cannot_buy_a_dearer_tier_or_storage_unless_the_route_allows(alice, demo_route,
                                                                                       sandbox_url):
    body = {"model": "demo", "messages": HELLO, "service_tier": "priority", "store": True, "max_tokens": 9}
    assert chat(alice, body).status_code == 200
    sent = _upstream(sandbox_url)["body"]
    assert "service_tier" not in sent and "store" not in sent
    assert chat(alice, {**body, "service_tier": "auto", "store": False}).status_code == 200
    sent = _upstream(sandbox_url)["body"]
    assert (sent["service_tier"], sent["store"]) == ("auto", False)
    ModelRoute.objects.filter(pk=demo_route.pk).update(allow_price_fields=True)
    from proxy.routing import route_cache

    route_cache.clear_local()
    assert chat(alice, body).status_code == 200
    sent = _upstream(sandbox_url)["body"]
    assert (sent["service_tier"], sent["store"]) == ("priority", True)


@pytest.fixture
def claude_route(db, sandbox_url, monkeypatch) -> ModelRoute:
    monkeypatch.setenv("TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY", "sk-upstream")
    provider = Provider.objects.create(name="p-anthropic", kind="anthropic", base_url=sandbox_url,
                                       api_key_env="TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY")
    route = ModelRoute.objects.create(model="via-anthropic")
    Deployment.objects.create(route=route, provider=provider, upstream_model="up-anthropic")
    return route


def test_claude_codes_betas_pass_except_the_long_context_one(alice, claude_route, sandbox_url):
    beta = _claude_code_beta()
    body = {"model": "via-anthropic", "max_tokens": 20, "messages": HELLO}
    response = call("POST", "/v1/messages", key=alice, body=body,
                     headers={"anthropic-version": "2023-06-01", "anthropic-beta": beta})
    assert response.status_code == 200, response.content
    sent = _upstream(sandbox_url)["headers"]["anthropic-beta"].split(",")
    assert sent == [v for v in beta.split(",") if not v.startswith("context-1m-")]
    assert "claude-code-20250219" in sent and "interleaved-thinking-2025-05-14" in sent
