"""Budgets and rate limits on the request path, in-process (SQLite, or PostgreSQL + Redis)."""
from __future__ import annotations

import math
from datetime import timedelta

import orjson
import pytest
from django.test import override_settings
from django.utils import timezone

from budgets.admission import budget_reserve, budget_settle
from budgets.models import BudgetReservation, BudgetUsage, ModelPrice
from budgets.selectors import budget_usage_report, limits_for_key, price_table
from proxy.admission import estimate_prompt_tokens
from proxy.models import Deployment, ModelRoute, Provider
from proxy.sandbox import expected_usage
from tests.budgets.conftest import budget, rate_limit
from tests.proxy.client import chat
from tests.servers import free_port

HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}


def reserve_for(body: dict) -> int:
    return estimate_prompt_tokens(body) + body["max_tokens"]


def report(consumer) -> dict[str, dict]:
    return {row.metric: row.__dict__ for row in budget_usage_report(consumer=consumer)}


pytestmark = pytest.mark.django_db


def test_it_charges_the_exact_usage_of_a_non_streamed_request(personas, alice, demo_route):
    budget(personas.alice, metric="tokens", limit=100_000)
    budget(personas.alice, metric="requests", limit=10)
    response = chat(alice, HELLO)
    assert response.status_code == 200
    usage = expected_usage("openai", HELLO)
    rows = report(personas.alice)
    assert rows["tokens"]["used"] == usage.prompt_tokens + usage.completion_tokens
    assert rows["requests"]["used"] == 1
    assert rows["tokens"]["reserved"] == 0
    assert not BudgetReservation.objects.exists()


@pytest.mark.parametrize("client_wants_usage", [False, True])
def test_it_charges_the_exact_usage_of_a_streamed_request(personas, alice, demo_route, client_wants_usage):
    budget(personas.alice, metric="tokens", limit=100_000)
    body = {**HELLO, "stream": True}
    if client_wants_usage:
        body["stream_options"] = {"include_usage": True}
    response = chat(alice, body)
    assert response.status_code == 200
    assert response.sse_events()[-1] == b"data: [DONE]"
    usage = expected_usage("openai", HELLO)
    rows = report(personas.alice)
    assert rows["tokens"]["used"] == usage.prompt_tokens + usage.completion_tokens
    assert rows["tokens"]["reserved"] == 0


def test_it_refuses_a_request_over_the_token_budget_and_names_the_budget(personas, alice, demo_route):
    one = reserve_for(HELLO)
    usage = expected_usage("openai", HELLO)
    limit = one + usage.prompt_tokens + usage.completion_tokens - 1  # one worst case, not two
    budget(personas.alice, metric="tokens", limit=limit)
    assert chat(alice, HELLO).status_code == 200
    used = report(personas.alice)["tokens"]["used"]
    refused = chat(alice, HELLO)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error"
    assert error["code"] == "budget_exceeded"
    assert "tokens budget" in error["message"] and "per day (UTC)" in error["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-tokens"] == str(limit)
    assert int(refused.headers["x-ratelimit-remaining-tokens"]) == limit - used
    # A refused request holds and charges nothing.
    assert report(personas.alice)["tokens"]["used"] == used
    assert report(personas.alice)["tokens"]["reserved"] == 0


def test_a_soft_budget_never_refuses(personas, alice, demo_route):
    budget(personas.alice, metric="tokens", limit=1, mode="soft")
    assert chat(alice, HELLO).status_code == 200
    assert chat(alice, HELLO).status_code == 200
    assert report(personas.alice)["tokens"]["used"] > 1


def test_a_key_budget_limits_only_that_key(personas, alice, demo_route):
    from budgets.models import ApiKey, Budget

    key = ApiKey.objects.get(consumer=personas.alice, name="laptop")
    Budget.objects.create(key=key, metric="requests", limit=1, period="day")
    assert chat(alice, HELLO).status_code == 200
    refused = chat(alice, HELLO)
    assert refused.status_code == 429
    assert "API key's requests budget" in refused.json()["error"]["message"]


def test_it_releases_the_reservation_when_the_upstream_fails(personas, alice, db):
    down = Provider.objects.create(name="down", kind="openai", base_url=f"http://127.0.0.1:{free_port()}/v1")
    route = ModelRoute.objects.create(model="down")
    Deployment.objects.create(route=route, provider=down, upstream_model="gpt-4o-mini")
    budget(personas.alice, metric="tokens", limit=100_000)
    budget(personas.alice, metric="requests", limit=10)
    response = chat(alice, {**HELLO, "model": "down"})
    assert response.status_code == 502
    rows = report(personas.alice)
    assert rows["tokens"]["used"] == 0 and rows["tokens"]["reserved"] == 0
    # It reached (tried) a provider, so it counts as a request.
    assert rows["requests"]["used"] == 1
    assert not BudgetReservation.objects.exists()


def test_cost_comes_from_the_price_table_in_micro_dollars(personas, alice, demo_route):
    ModelPrice.objects.create(model="sandbox-model", input_per_million=150_000, output_per_million=600_000)
    budget(personas.alice, metric="cost_usd", limit=50_000_000, period="month")
    assert chat(alice, HELLO).status_code == 200
    usage = expected_usage("openai", HELLO)
    expected = math.ceil((usage.prompt_tokens * 150_000 + usage.completion_tokens * 600_000) / 1_000_000)
    assert report(personas.alice)["cost_usd"]["used"] == expected


def test_a_cost_budget_refuses_when_the_worst_case_would_overspend(personas, alice, demo_route):
    ModelPrice.objects.create(model="sandbox-model", input_per_million=10_000_000, output_per_million=10_000_000)
    budget(personas.alice, metric="cost_usd", limit=100, period="month")  # $0.0001
    refused = chat(alice, {**HELLO, "max_tokens": 1000})
    assert refused.status_code == 429
    assert "cost_usd budget of $0.0001 per month" in refused.json()["error"]["message"]


def test_dated_model_versions_take_the_base_models_price(db):
    ModelPrice.objects.create(model="gpt-4o", input_per_million=2_500_000, output_per_million=10_000_000)
    ModelPrice.objects.create(model="gpt-4o-mini", input_per_million=150_000, output_per_million=600_000)
    table = __import__("asgiref.sync").sync.async_to_sync(price_table)()
    assert table.lookup("gpt-4o-2024-08-06") == (2_500_000, 10_000_000)
    assert table.lookup("gpt-4o-mini-2024-07-18") == (150_000, 600_000)
    assert table.lookup("gpt-4oops") is None
    assert table.cost("gpt-4o", 1_000_000, 1) == 2_500_010


def test_the_seeded_price_table_knows_common_models(db):
    from asgiref.sync import async_to_sync

    table = async_to_sync(price_table)()
    for model in ("gpt-4o-mini", "gpt-4.1", "claude-sonnet-4-5-20250929", "claude-haiku-4-5",
                  "gemini-2.5-flash", "models/gemini-2.5-pro"):
        assert table.lookup(model) is not None, model
    assert table.lookup("gpt-4o-mini") == (150_000, 600_000)


def test_it_limits_requests_per_window_with_the_configured_code_and_message(personas, alice, demo_route):
    rate_limit(personas.alice, requests=2, window_seconds=3600, rejected_code=503,
               rejected_msg="Slow down, alice")
    first = chat(alice, HELLO)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert chat(alice, HELLO).status_code == 200
    refused = chat(alice, HELLO)
    assert refused.status_code == 503
    assert refused.json()["error"]["message"] == "Slow down, alice"
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1
    # Another consumer is not affected.
    assert chat(personas.bob_key, HELLO).status_code == 200


def test_the_default_rate_limit_message_names_the_limit(personas, alice, demo_route):
    rate_limit(personas.alice, requests=1, window_seconds=60)
    chat(alice, HELLO)
    refused = chat(alice, HELLO)
    assert refused.status_code == 429
    assert "1 requests per 60 seconds" in refused.json()["error"]["message"]


def test_it_limits_tokens_per_window_and_charges_real_usage(personas, alice, demo_route):
    one = reserve_for(HELLO)
    usage = expected_usage("openai", HELLO)
    real = usage.prompt_tokens + usage.completion_tokens
    rate_limit(personas.alice, tokens=one + real, window_seconds=3600)
    first = chat(alice, HELLO)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == str(one + real)
    # Settled: only the real usage stays counted, so a second request still fits.
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == one
    assert chat(alice, HELLO).status_code == 200
    refused = chat(alice, HELLO)
    assert refused.status_code == 429
    assert "tokens per 3600 seconds" in refused.json()["error"]["message"]


def test_headers_are_on_streamed_responses_too(personas, alice, demo_route):
    rate_limit(personas.alice, requests=5, window_seconds=60)
    budget(personas.alice, metric="tokens", limit=100_000)
    response = chat(alice, {**HELLO, "stream": True})
    for name in ("limit-requests", "remaining-requests", "reset-requests", "limit-tokens",
                 "remaining-tokens", "reset-tokens"):
        assert f"x-ratelimit-{name}" in response.headers


def test_a_consumer_without_limits_gets_no_limit_headers_and_no_counters(personas, alice, demo_route):
    response = chat(alice, HELLO)
    assert response.status_code == 200
    assert not any(name.startswith("x-ratelimit") for name in response.headers)
    assert not BudgetUsage.objects.exists()


def test_route_default_max_tokens_is_reserved_when_the_request_gives_none(personas, alice, demo_route):
    ModelRoute.objects.filter(pk=demo_route.pk).update(default_max_tokens=10_000)
    body = {k: v for k, v in HELLO.items() if k != "max_tokens"}
    budget(personas.alice, metric="tokens", limit=5_000)
    refused = chat(alice, body)
    assert refused.status_code == 429
    assert chat(alice, {**body, "max_tokens": 100}).status_code == 200


@override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
def test_it_fails_closed_with_503_when_redis_is_down(personas, alice, demo_route):
    budget(personas.alice, metric="tokens", limit=100_000)
    response = chat(alice, HELLO)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "limits_unavailable"
    assert "cannot check rate limits and budgets" in response.json()["error"]["message"]
    assert response.headers["retry-after"] == "1"


@override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", TOLLGATE_LIMITS_FAIL_OPEN=True)
def test_it_fails_open_and_still_charges_when_configured(personas, alice, demo_route):
    budget(personas.alice, metric="tokens", limit=100_000)
    response = chat(alice, HELLO)
    assert response.status_code == 200
    usage = expected_usage("openai", HELLO)
    assert BudgetUsage.objects.get().used == usage.prompt_tokens + usage.completion_tokens


def test_an_unsettled_reservation_expires_and_stops_blocking_the_budget(personas, db):
    """A worker killed between reserve and settle: its hold is released after the TTL."""
    from asgiref.sync import async_to_sync

    from budgets.keys import key_digest
    from budgets.selectors import key_info_by_digest

    budget(personas.alice, metric="tokens", limit=1000)
    key = key_info_by_digest(key_digest(personas.alice_key))
    limits = async_to_sync(limits_for_key)(key)
    start = timezone.now().replace(hour=1, minute=0)
    async_to_sync(budget_reserve)(key=key, limits=limits, request_id="req_killed", tokens=900, cost=0, now=start)
    with pytest.raises(Exception, match="Budget exceeded"):
        async_to_sync(budget_reserve)(key=key, limits=limits, request_id="req_2", tokens=900, cost=0,
                                      now=start + timedelta(seconds=1))
    later = start + timedelta(minutes=20)  # past TOLLGATE_RESERVATION_TTL_SECONDS (15 minutes)
    admitted = async_to_sync(budget_reserve)(key=key, limits=limits, request_id="req_3", tokens=900, cost=0,
                                             now=later)
    async_to_sync(budget_settle)(admission=admitted, prompt_tokens=100, completion_tokens=50, requests=1, cost=0)
    row = report(personas.alice)["tokens"]
    assert row["used"] == 150
    assert row["reserved"] == 0


def test_the_usage_command_prints_limit_used_and_remaining(personas, alice, demo_route, capsys):
    from django.core.management import call_command

    budget(personas.alice, metric="tokens", limit=100_000)
    budget(personas.alice, metric="cost_usd", limit=50_000_000, period="month", mode="soft")
    chat(alice, HELLO)
    call_command("usage", "alice-agent")
    out = capsys.readouterr().out
    usage = expected_usage("openai", HELLO)
    used = usage.prompt_tokens + usage.completion_tokens
    assert "tokens" in out and f"{100_000:,}" in out and f"{used:,}" in out and f"{100_000 - used:,}" in out
    assert "$50" in out


def test_the_estimate_is_generous(db):
    body = {"messages": [{"role": "system", "content": "be brief " * 50},
                         {"role": "user", "content": [{"type": "text", "text": "héllo wörld " * 100}]}]}
    usage = expected_usage("openai", {**body, "model": "m"})
    assert estimate_prompt_tokens(body) >= usage.prompt_tokens
    assert orjson.dumps(body)  # the body is plain JSON
