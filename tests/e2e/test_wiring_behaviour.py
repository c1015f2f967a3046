"""The new endpoints (Responses, Gemini generateContent and stream, embeddings) behave as the chat ones on
the real server: an audit row each, rate limits, budgets, failover, X-Provider pinning, the probing defence."""
from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest

from tests.e2e.conftest import seed_providers, seeded_gateway

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

PROBE_BLOCK_AFTER = 3
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}

# endpoint (as the audit names it) -> (path, body) for a route, and whose error shape it answers in
ENDPOINTS = {
    "responses": (lambda route: ("/v1/responses", {"model": route, "input": "Say hello"}), "openai"),
    "gemini.generateContent": (lambda route: (f"/v1beta/models/{route}:generateContent", GEMINI_BODY), "gemini"),
    "gemini.streamGenerateContent": (
        lambda route: (f"/v1beta/models/{route}:streamGenerateContent?alt=sse", GEMINI_BODY), "gemini"),
    "embeddings": (lambda route: ("/v1/embeddings", {"model": route, "input": "Say hello"}), "openai"),
}


def _seed_consumers() -> dict[str, str]:
    from budgets.keys import key_issue
    from budgets.models import Budget, Consumer, RateLimit

    keys = {}
    for endpoint in ENDPOINTS:
        limited = Consumer.objects.create(name=f"e2e-wiring-limited-{endpoint}")
        RateLimit.objects.create(consumer=limited, requests=2, window_seconds=600)
        keys[f"limited:{endpoint}"] = key_issue(consumer=limited, name="e2e").plaintext
        poor = Consumer.objects.create(name=f"e2e-wiring-poor-{endpoint}")
        Budget.objects.create(consumer=poor, metric="tokens", limit=2, period="day")
        keys[f"poor:{endpoint}"] = key_issue(consumer=poor, name="e2e").plaintext
    return keys


@pytest.fixture(scope="module")
def gateway(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    def seed(port: int) -> SimpleNamespace:
        seeded = seed_providers(port)
        seeded.keys = _seed_consumers()
        return seeded

    # The module's own database (server_database) goes with it: nothing to unseed.
    with seeded_gateway(server_database, django_db_blocker, seed, TOLLGATE_BREAKER_FAILURES="1000",
                        TOLLGATE_PROBE_BLOCK_AFTER=str(PROBE_BLOCK_AFTER),
                        TOLLGATE_PROBE_SLOW_AFTER="100") as running:
        yield running


def send(gateway, endpoint: str, route: str, key: str, **headers: str) -> httpx.Response:
    build, shape = ENDPOINTS[endpoint]
    path, body = build(route)
    auth = {"x-goog-api-key": key} if shape == "gemini" else {"authorization": f"Bearer {key}"}
    return httpx.post(f"{gateway.url}{path}", json=body, headers={**auth, **headers}, timeout=20)


def assert_error_shape(response: httpx.Response, endpoint: str, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if ENDPOINTS[endpoint][1] == "gemini":
        assert error["code"] == status and error["status"] and error["message"]
    else:
        assert error["type"] and error["message"]
    return error


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_each_request_has_its_audit_row(gateway, endpoint):
    from audit.models import AuditEvent

    response = send(gateway, endpoint, "gpt", gateway.key)
    assert response.status_code == 200, response.text
    event = AuditEvent.objects.get(request_id=response.headers["x-request-id"])
    assert (event.endpoint, event.status, event.route, event.provider) == (endpoint, 200, "gpt", "e2e-openai")
    # The sandbox's count of "Say hello" (in a message: 4 more), from the provider's own usage.
    assert event.prompt_tokens == (3 if endpoint == "embeddings" else 7)
    assert event.consumer_name == "e2e-providers"


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_rate_limits_apply(gateway, endpoint):
    key = gateway.keys[f"limited:{endpoint}"]
    for _ in range(2):
        response = send(gateway, endpoint, "gpt", key)
        assert response.status_code == 200
        assert "x-ratelimit-remaining-requests" in response.headers or any(
            h.startswith("x-ratelimit") for h in response.headers)
    refused = send(gateway, endpoint, "gpt", key)
    assert_error_shape(refused, endpoint, 429)
    assert int(refused.headers["retry-after"]) > 0


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_budgets_reserve_before_the_call(gateway, endpoint):
    """A 2-token budget cannot hold the request's reservation (its input's estimate, and the answer's limit)."""
    refused = send(gateway, endpoint, "gpt", gateway.keys[f"poor:{endpoint}"])
    assert_error_shape(refused, endpoint, 429)


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_it_fails_over(gateway, endpoint):
    response = send(gateway, endpoint, "fail-503", gateway.key)
    assert response.status_code == 200, response.text
    assert response.headers["x-tollgate-provider"] == "e2e-openai"
    assert response.headers["x-tollgate-attempts"] in ("1", "2")  # 1 while a Retry-After cooldown skips it


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_x_provider_pins(gateway, endpoint):
    pinned = send(gateway, endpoint, "split", gateway.key, **{"X-Provider": "e2e-openai"})
    assert pinned.status_code == 200, pinned.text
    assert pinned.headers["x-tollgate-provider"] == "e2e-openai"
    error = assert_error_shape(send(gateway, endpoint, "split", gateway.key, **{"X-Provider": "e2e-gemini"}),
                               endpoint, 400)
    assert "X-Provider" in error["message"]


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_guessed_keys_are_blocked(gateway, endpoint):
    statuses = [send(gateway, endpoint, "gpt", f"tg-guess-{n:030d}").status_code
                for n in range(PROBE_BLOCK_AFTER + 1)]
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    blocked = send(gateway, endpoint, "gpt", "tg-guess-again-000000000000000000000")
    assert_error_shape(blocked, endpoint, 429)
    assert "tollgate" not in blocked.text.lower()
    assert send(gateway, endpoint, "gpt", gateway.key).status_code == 200  # a valid key is still served
