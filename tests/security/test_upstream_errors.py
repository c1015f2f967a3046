"""A provider's error reaches the agent without the operator's secrets (issue #15; docs/reliability.md,
Upstream errors). The sandbox answers with real providers' error texts (its fail_realistic knob):
OpenAI's "Incorrect API key provided: sk-proj-***abcd", an organisation id in a rate limit, Gemini's
400 for a bad key."""
from __future__ import annotations

import logging
import time

import orjson
import pytest

from gateway_site.lib.secretfilter import _BEARER, _SECRETS, scrub_secrets
from proxy.models import Deployment, ModelRoute, Provider
from proxy.providers.ir import StreamError
from tests.proxy.client import call, chat

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "Say hello"}]
ANTHROPIC = {"anthropic-version": "2023-06-01"}
# What no agent may see: the key fragment, the organisation and project ids of the sandbox's texts.
SECRETS = (b"sk-proj", b"***abcd", b"org-Sb4XyZ12abCD", b"proj_Xq3vB7kLm2Tz")


def test_the_scrubber_removes_key_fragments_bearer_tokens_organisations_and_projects():
    cases = {
        "Incorrect API key provided: sk-proj-***abcd. You can find your API key at https://x.":
            "Incorrect API key provided: sk-[redacted]. You can find your API key at https://x.",
        "key sk-ant-api03-AbC_d-1 refused": "key sk-[redacted] refused",
        "key AIzaSyA1234567890abcdefghij bad": "key AIza[redacted] bad",
        "Rate limit reached in organization org-Sb4XyZ12abCD on tokens": "Rate limit reached in organization "
                                                                        "org-[redacted] on tokens",
        "Project `proj_Xq3vB7kLm2Tz` has no access": "Project `proj_[redacted]` has no access",
        "got Authorization: Bearer eyJhbGciOi.x-y_z": "got Authorization: Bearer [redacted]",
        "the key ending ****wxyz": "the key ending [redacted]",
        "gateway key tg-AAAAAAAAAAAAAAAAAAAAAAAAAAAA": "gateway key tg-[redacted]",
    }
    for text, scrubbed in cases.items():
        assert scrub_secrets(text) == scrubbed
    # What agents branch on is left alone.
    for text in ("This model's maximum context length is 128000 tokens.", "prompt is too long: 215013 tokens > "
                 "200000 maximum", "Overloaded", "task-force desk-org-x proj_ sk-"):
        assert scrub_secrets(text) == text


def test_every_scrubbing_pattern_is_linear_on_hostile_input():
    """Uncapped, on 200 kB built to make a backtracking pattern scan each run from each position."""
    patterns = [pattern for _, pattern, _ in _SECRETS] + [_BEARER]
    for attack in ("sk-" * 70_000, "*" * 200_000, "a" * 200_000, "org-" * 50_000, "proj_" * 40_000,
                   "Bearer " * 30_000, "AIza" * 50_000, "sk-***" * 35_000, "tg-" * 70_000):
        for pattern in patterns:
            started = time.perf_counter()
            pattern.sub("x", attack)
            assert time.perf_counter() - started < 0.5, (pattern.pattern, attack[:12])


def test_a_providers_error_inside_a_stream_is_scrubbed_on_the_way_in():
    assert StreamError("Incorrect API key provided: sk-proj-***abcd", 401).message == \
        "Incorrect API key provided: sk-[redacted]"


@pytest.fixture
def leaky(db, sandbox_url, monkeypatch):
    """Route `leaky-<kind>` per provider kind, on the sandbox; each test sets the status it fails with."""
    monkeypatch.setenv("TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY", "sk-upstream")

    def route(kind: str, status: int) -> str:
        base = {"openai": f"{sandbox_url}/v1", "anthropic": sandbox_url, "gemini": f"{sandbox_url}/v1beta"}[kind]
        provider = Provider.objects.create(name=f"leaky-{kind}", kind=kind, base_url=base,
                                           api_key_env="TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY", extra_headers={
                                               "x-sandbox-fail-status": str(status), "x-sandbox-fail-realistic": "1"})
        model = ModelRoute.objects.create(model=f"leaky-{kind}")
        Deployment.objects.create(route=model, provider=provider, upstream_model="upstream-model")
        return model.model
    return route


def no_secrets(content: bytes) -> None:
    for secret in SECRETS:
        assert secret not in content, content


@pytest.mark.parametrize(("kind", "status"), [("openai", 401), ("openai", 403), ("anthropic", 401), ("gemini", 400)])
@pytest.mark.parametrize("caller", ["openai", "anthropic"])
def test_a_refused_provider_credential_is_a_502_for_the_operator(personas, leaky, caplog, kind, status, caller):
    model = leaky(kind, status)
    with caplog.at_level(logging.ERROR, logger="tollgate.upstream"):
        if caller == "openai":
            response = chat(personas.alice_key, {"model": model, "messages": HELLO})
        else:
            response = call("POST", "/v1/messages", key=personas.alice_key, headers=ANTHROPIC,
                            body={"model": model, "max_tokens": 20, "messages": HELLO})
    assert response.status_code == 502, response.content
    no_secrets(response.content)
    for provider_text in (b"Incorrect API key", b"invalid x-api-key", b"API key not valid", b"does not have access"):
        assert provider_text not in response.content
    if caller == "openai":
        assert response.json()["error"]["code"] == "upstream_authentication_failed"
    else:
        assert response.json()["type"] == "error" and response.json()["error"]["type"] == "api_error"
    # The operator gets the provider's own words, on the server.
    logged = [r.getMessage() for r in caplog.records if r.name == "tollgate.upstream" and r.levelno == logging.ERROR]
    said = {("openai", 401): "Incorrect API key provided: sk-proj-***abcd", ("openai", 403): "does not have access",
            ("anthropic", 401): "invalid x-api-key", ("gemini", 400): "API key not valid"}[kind, status]
    assert len(logged) == 1 and f"leaky-{kind}" in logged[0] and said in logged[0], logged


def test_a_rate_limit_keeps_status_type_code_and_retry_after_without_the_organisation(personas, leaky):
    model = leaky("openai", 429)
    response = chat(personas.alice_key, {"model": model, "messages": HELLO})
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert "Rate limit reached for gpt-4o in organization org-[redacted] on tokens per min" in error["message"]
    assert response.headers["retry-after"] == "1"
    no_secrets(response.content)


def test_a_context_length_error_keeps_its_code_and_param_on_a_same_format_call(personas, leaky):
    response = chat(personas.alice_key, {"model": leaky("openai", 400), "messages": HELLO})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "context_length_exceeded",
                                                              "messages")
    assert error["message"].startswith("This model's maximum context length is 128000 tokens.")


def test_a_context_length_error_reaches_an_anthropic_caller_in_its_shape(personas, leaky):
    response = call("POST", "/v1/messages", key=personas.alice_key, headers=ANTHROPIC,
                    body={"model": leaky("openai", 400), "max_tokens": 20, "messages": HELLO})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "maximum context length is 128000 tokens" in response.json()["error"]["message"]
    assert b"Provider '" not in response.content  # no more "Provider 'x' answered 400: ..."


def test_prompt_too_long_and_overloaded_pass_through_as_agents_expect(personas, leaky):
    too_long = call("POST", "/v1/messages", key=personas.alice_key, headers=ANTHROPIC,
                    body={"model": leaky("anthropic", 400), "max_tokens": 20, "messages": HELLO})
    assert too_long.status_code == 400
    assert orjson.loads(too_long.content)["error"] == {"type": "invalid_request_error",
                                                       "message": "prompt is too long: 215013 tokens > 200000 maximum"}
    Provider.objects.filter(name="leaky-anthropic").update(extra_headers={"x-sandbox-fail-status": "529",
                                                                          "x-sandbox-fail-realistic": "1"})
    from proxy.routing import route_cache
    route_cache.clear_local()
    overloaded = chat(personas.alice_key, {"model": "leaky-anthropic", "messages": HELLO})
    assert overloaded.status_code == 529
    assert overloaded.json()["error"]["type"] == "overloaded_error"
    assert overloaded.json()["error"]["message"] == "Overloaded"
