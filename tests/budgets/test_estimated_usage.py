"""Usage that never came is charged as estimated (issue #16): a stream the provider cut, a call that timed
out after it was sent; a refusal is not."""
from __future__ import annotations

import math

import pytest

from audit.models import AuditEvent
from proxy.admission import estimate_prompt_tokens
from proxy.models import Deployment, ModelRoute, Provider
from proxy.sandbox import expected_usage
from tests.budgets.conftest import budget
from tests.budgets.test_admission import report
from tests.proxy.client import chat

pytestmark = pytest.mark.django_db

BODY = {"model": "flaky", "messages": [{"role": "user", "content": "Tell me about the budget " * 20}],
        "max_tokens": 100}


def _route(sandbox_url: str, **provider_fields) -> None:
    provider = Provider.objects.create(name="flaky", kind="sandbox", base_url=f"{sandbox_url}/v1", **provider_fields)
    route = ModelRoute.objects.create(model="flaky", max_retries=0)
    Deployment.objects.create(route=route, provider=provider, upstream_model="sandbox-model")


def _event(response) -> AuditEvent:
    return AuditEvent.objects.get(request_id=response.headers["x-request-id"])


def test_a_stream_the_provider_cut_is_charged_its_prompt_and_what_was_relayed(personas, alice, sandbox_url):
    _route(sandbox_url, extra_headers={"x-sandbox-disconnect-after": "4"})
    budget(personas.alice, metric="tokens", limit=100_000)
    response = chat(alice, {**BODY, "stream": True})
    assert response.status_code == 200
    event = _event(response)
    assert (event.error_class, event.usage_source) == ("stream_interrupted", "estimated")
    assert event.prompt_tokens == estimate_prompt_tokens(BODY) >= expected_usage("openai", BODY).prompt_tokens
    # Three content chunks of 8 reached the client (the role chunk is the first event): ~3/8 of the reply.
    reply = expected_usage("openai", BODY).completion_tokens
    assert 0 < event.completion_tokens <= math.ceil(reply / 2)
    assert report(personas.alice)["tokens"]["used"] == event.prompt_tokens + event.completion_tokens
    assert report(personas.alice)["tokens"]["reserved"] == 0


def test_a_call_that_timed_out_after_it_was_sent_is_charged_its_prompt(personas, alice, sandbox_url):
    _route(sandbox_url, timeout_seconds=0.3, extra_headers={"x-sandbox-hang-ms": "2000"})
    budget(personas.alice, metric="tokens", limit=100_000)
    response = chat(alice, BODY)
    assert response.status_code == 504
    event = _event(response)
    assert event.usage_source == "estimated"
    assert (event.prompt_tokens, event.completion_tokens) == (estimate_prompt_tokens(BODY), 0)
    assert report(personas.alice)["tokens"]["used"] == event.prompt_tokens


def test_a_refusal_is_not_charged(personas, alice, sandbox_url):
    _route(sandbox_url, extra_headers={"x-sandbox-fail-status": "529"})
    budget(personas.alice, metric="tokens", limit=100_000)
    response = chat(alice, {**BODY, "stream": True})
    assert response.status_code == 529
    event = _event(response)
    assert event.usage_source is None and event.prompt_tokens is None
    assert report(personas.alice)["tokens"]["used"] == 0


def test_an_answer_with_its_usage_is_charged_as_the_provider_said(personas, alice, sandbox_url):
    _route(sandbox_url, extra_headers={"x-sandbox-cache-read-percent": "50", "x-sandbox-reasoning-tokens": "5"})
    response = chat(alice, BODY)
    event = _event(response)
    usage = expected_usage("openai", BODY, cache_read_percent=50, reasoning_tokens=5)
    assert event.usage_source == "provider"
    assert (event.prompt_tokens, event.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
