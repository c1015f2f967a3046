"""Exact accounting for each provider wire format and each caller format, streamed or not."""
from __future__ import annotations

import pytest

from budgets.selectors import budget_usage_report
from tests.budgets.conftest import budget
from tests.proxy.client import call, chat

pytestmark = pytest.mark.django_db

PROMPT = [{"role": "user", "content": "Tell me about budgets, in a few words."}]
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}


@pytest.fixture
def kinds(db, sandbox_url, monkeypatch) -> None:
    """A route on a provider of each wire format, all served by the sandbox."""
    from proxy.models import Deployment, ModelRoute, Provider

    monkeypatch.setenv("TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY", "sk-upstream")
    key = {"api_key_env": "TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY"}
    for kind, base_url in (("openai", f"{sandbox_url}/v1"), ("anthropic", sandbox_url),
                           ("gemini", f"{sandbox_url}/v1beta")):
        provider = Provider.objects.create(name=f"p-{kind}", kind=kind, base_url=base_url, **key)
        route = ModelRoute.objects.create(model=f"via-{kind}", default_max_tokens=333)
        Deployment.objects.create(route=route, provider=provider, upstream_model=f"up-{kind}")


def used(consumer) -> int:
    [row] = budget_usage_report(consumer=consumer)
    assert row.reserved == 0
    return row.used


def openai_call(key: str, model: str, stream: bool):
    response = chat(key, {"model": model, "messages": PROMPT, "max_tokens": 100, "stream": stream})
    assert response.status_code == 200, response.content
    if stream:
        return None
    usage = response.json()["usage"]
    return usage["prompt_tokens"] + usage["completion_tokens"]


def anthropic_call(key: str, model: str, stream: bool):
    response = call("POST", "/v1/messages", key=key, headers=ANTHROPIC_HEADERS,
                    body={"model": model, "messages": PROMPT, "max_tokens": 100, "stream": stream})
    assert response.status_code == 200, response.content
    if stream:
        return None
    usage = response.json()["usage"]
    return usage["input_tokens"] + usage["output_tokens"]


@pytest.mark.parametrize("caller", [openai_call, anthropic_call], ids=["openai-caller", "anthropic-caller"])
@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
def test_streamed_and_non_streamed_requests_are_charged_exactly(personas, kinds, kind, caller):
    budget(personas.alice, metric="tokens", limit=1_000_000)
    reported = caller(personas.alice_key, f"via-{kind}", False)
    assert reported > 0
    assert used(personas.alice) == reported  # what the provider reported, no more, no less
    caller(personas.alice_key, f"via-{kind}", True)
    assert used(personas.alice) == 2 * reported  # the stream's usage events, exactly


def test_an_anthropic_caller_is_refused_in_anthropic_shape_with_headers(personas, kinds):
    budget(personas.alice, metric="requests", limit=1)
    anthropic_call(personas.alice_key, "via-anthropic", False)
    refused = call("POST", "/v1/messages", key=personas.alice_key, headers=ANTHROPIC_HEADERS,
                   body={"model": "via-anthropic", "messages": PROMPT, "max_tokens": 100})
    assert refused.status_code == 429
    body = refused.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "requests budget of 1 per day" in body["error"]["message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1
