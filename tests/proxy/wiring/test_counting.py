"""Token counting asks a provider that can count, translated when needed, and says when it estimated."""
from __future__ import annotations

from types import SimpleNamespace

import httpx
import orjson
import pytest

from proxy import relay
from tests.proxy.client import call

BODY = {"messages": [{"role": "user", "content": "Say hello"}], "system": "Be terse."}
ANTHROPIC = {"anthropic-version": "2023-06-01"}


def count(key, route, body=BODY):
    return call("POST", "/v1/messages/count_tokens", key=key, body={**body, "model": route}, headers=ANTHROPIC)


@pytest.mark.django_db
@pytest.mark.parametrize("route, fmt", [("anthropic-route", "anthropic.count_tokens"),
                                        ("gemini-route", "gemini.countTokens")])
def test_messages_count_tokens_asks_anthropic_and_gemini(alice, kinds, sandbox_url, route, fmt):
    response = count(alice, route)
    assert response.status_code == 200, response.content
    assert response.headers["x-tollgate-token-count"] == "exact"
    assert response.json() == {"input_tokens": 10}  # the sandbox's count: 3 (system) + 4 + 3
    seen = httpx.get(f"{sandbox_url}/_sandbox/requests", params={"format": fmt, "limit": 1}).json()["requests"]
    assert seen, fmt


@pytest.mark.django_db
@pytest.mark.parametrize("route", ["sandbox-route", "compatible-route"])
def test_it_says_when_it_only_estimates(alice, kinds, route):
    response = count(alice, route)
    assert response.status_code == 200
    assert response.headers["x-tollgate-token-count"] == "estimated"
    assert response.json()["input_tokens"] > 0


@pytest.mark.django_db
def test_openai_counts_through_its_input_tokens_endpoint(alice, kinds, monkeypatch):
    asked = []
    real_post = relay.upstream_post

    async def fake_post(url, *, content, headers, timeouts):
        if not url.endswith("/responses/input_tokens"):
            return await real_post(url, content=content, headers=headers, timeouts=timeouts)
        asked.append((url, orjson.loads(content)))
        return SimpleNamespace(status_code=200, headers={}), b'{"object": "response.input_tokens", "input_tokens": 9}'

    monkeypatch.setattr(relay, "upstream_post", fake_post)
    response = count(alice, "openai-route")
    assert response.headers["x-tollgate-token-count"] == "exact"
    assert response.json() == {"input_tokens": 9}
    (url, payload), = asked
    assert url.endswith("/v1/responses/input_tokens")
    assert payload["model"] == "up-openai" and payload["instructions"] == "Be terse."
    assert payload["input"][0]["role"] == "user"
    gemini = call("POST", "/v1beta/models/openai-route:countTokens", headers={"x-goog-api-key": alice},
                  body={"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]})
    assert gemini.json() == {"totalTokens": 9}


@pytest.mark.django_db
def test_a_failing_counter_falls_back_to_the_next_deployment_then_to_an_estimate(alice, kinds, sandbox_url):
    from proxy.models import Deployment, ModelRoute, Provider

    broken = Provider.objects.create(name="broken", kind="anthropic", base_url="http://127.0.0.1:9")
    route = ModelRoute.objects.create(model="counting")
    Deployment.objects.create(route=route, provider=broken, upstream_model="x", priority=0)
    alone = count(alice, "counting")
    assert alone.headers["x-tollgate-token-count"] == "estimated"
    from proxy.routing import route_cache

    Deployment.objects.create(route=route, provider=kinds.gemini, upstream_model="g", priority=1)
    route_cache.clear_local()
    assert count(alice, "counting").headers["x-tollgate-token-count"] == "exact"
