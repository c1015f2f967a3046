"""Team and route-scoped budgets under concurrency, through the real server (gunicorn, two uvicorn workers)
on PostgreSQL, with the Redis counters and with the database counters used without Redis."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connection

from audit.models import AuditEvent
from budgets import counters
from budgets.keys import key_issue
from budgets.models import Budget, BudgetReservation, BudgetUsage, Consumer, Team
from proxy.admission import estimate_prompt_tokens
from proxy.models import Deployment, ModelRoute, Provider
from proxy.sandbox import expected_usage
from tests.budgets.conftest import requires_postgres_and_redis
from tests.servers import database_url_for, free_port, sandbox_and_gateway, server_env

# Transactional: the server processes must see the rows this test writes.
pytestmark = [pytest.mark.e2e, requires_postgres_and_redis, pytest.mark.django_db(transaction=True)]

PROMPT = "Share the budget, every token of it. " * 10
BODY = {"model": "opus", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 5}
RESERVE = estimate_prompt_tokens(BODY) + BODY["max_tokens"]
ACTUAL = expected_usage("openai", BODY).prompt_tokens + expected_usage("openai", BODY).completion_tokens
LIMIT = 10 * RESERVE  # admits about 10 of 50 (a little more: each settles below its hold)


@contextmanager
def running_gateway(**env_overrides: str) -> Iterator[SimpleNamespace]:
    """Two workers; routes `opus` and `haiku` on one sandbox provider."""
    sandbox_port = free_port()
    env = server_env(DATABASE_URL=database_url_for(connection.settings_dict), **env_overrides)
    provider = Provider.objects.create(name=f"team-sandbox-{sandbox_port}", kind="sandbox",
                                       base_url=f"http://127.0.0.1:{sandbox_port}/v1",
                                       extra_headers={"x-sandbox-latency-ms": "50", "x-sandbox-chunk-delay-ms": "10"})
    for model in ("opus", "haiku"):
        route = ModelRoute.objects.create(model=model)
        Deployment.objects.create(route=route, provider=provider, upstream_model="sandbox-model")
    try:
        with sandbox_and_gateway(env=env, sandbox_port=sandbox_port, workers=2, log_name="teams-") as running:
            yield running
    finally:
        ModelRoute.objects.filter(model__in=["opus", "haiku"]).delete()
        provider.delete()


async def fire(url: str, calls: list[tuple[str, dict]]) -> list[httpx.Response]:
    """(key, body) pairs, all at once; no keep-alive, so both workers get traffic."""
    limits = httpx.Limits(max_connections=len(calls), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def one(key: str, body: dict) -> httpx.Response:
            response = await client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
            await response.aread()
            return response

        return await asyncio.gather(*(one(key, body) for key, body in calls))


def audited_tokens(responses: list[httpx.Response], *, timeout: float = 10.0) -> int:
    """Tokens the audit log recorded for the answered requests (each row is written before its answer ends)."""
    ids = [r.headers["x-request-id"] for r in responses if r.status_code == 200]
    deadline = time.monotonic() + timeout
    while True:
        events = list(AuditEvent.objects.filter(request_id__in=ids))
        if len(events) == len(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(events) == len(ids)
    return sum((e.prompt_tokens or 0) + (e.completion_tokens or 0) for e in events)


def settled(budget: Budget, *, expected: int, timeout: float = 5.0) -> BudgetUsage:
    """The budget window's database row, once it holds `expected` (the Redis path writes it every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        row = BudgetUsage.objects.filter(budget=budget).first()
        if (row is not None and row.used >= expected) or time.monotonic() > deadline:
            assert row is not None
            return row
        time.sleep(0.2)


def assert_refused_by(responses: list[httpx.Response], owner_words: str) -> None:
    refused = [r for r in responses if r.status_code == 429]
    assert refused, "the budget refused nobody"
    for response in refused:
        error = response.json()["error"]
        assert error["code"] == "budget_exceeded" and owner_words in error["message"], error
        assert "retry-after" in response.headers


def assert_no_hold_left(budget: Budget, row: BudgetUsage) -> None:
    assert row.reserved == 0
    assert not BudgetReservation.objects.filter(budget=budget).exists()
    if settings.REDIS_URL:
        live = redis.Redis.from_url(settings.REDIS_URL)
        hash_key, holds_key = counters.budget_keys(counters.budget_slot(budget), budget.pk, row.period_start)
        live_reserved = live.hget(hash_key, "reserved")
        assert int(live_reserved or 0) == 0 and live.zcard(holds_key) == 0


@pytest.fixture
def team(server_database, transactional_db) -> SimpleNamespace:
    """Two consumers of one team, a key each."""
    suffix = free_port()
    research = Team.objects.create(name=f"team-e2e-{suffix}")
    keys = []
    for name in ("ann", "ben"):
        consumer = Consumer.objects.create(name=f"{name}-{suffix}", team=research)
        keys.append(key_issue(consumer=consumer, name="e2e").plaintext)
    return SimpleNamespace(team=research, keys=keys)


def _team_budget_holds(team: SimpleNamespace, **env: str) -> None:
    budget = Budget.objects.create(team=team.team, metric="tokens", limit=LIMIT, period="day")
    with running_gateway(**env) as gateway:
        calls = [(team.keys[i % 2], {**BODY, "stream": i % 4 >= 2}) for i in range(50)]
        responses = asyncio.run(fire(gateway.url, calls))
        statuses = [r.status_code for r in responses]
        served = statuses.count(200)
        assert statuses.count(429) + served == 50, statuses
        assert 10 <= served <= LIMIT // ACTUAL, statuses
        assert_refused_by(responses, "this team's tokens budget")
        # One budget for both: each consumer sent 25, more than the budget allows the two together.
        assert {r.request.headers["authorization"] for r in responses if r.status_code == 429} == {
            f"Bearer {key}" for key in team.keys}
        audited = audited_tokens(responses)
        row = settled(budget, expected=audited)
    assert audited == served * ACTUAL <= LIMIT
    assert row.used == audited
    assert_no_hold_left(budget, row)
    if env.get("REDIS_URL") != "":
        live = redis.Redis.from_url(settings.REDIS_URL)
        live_key = counters.budget_keys(counters.budget_slot(budget), budget.pk, row.period_start)[0]
        assert int(live.hget(live_key, "used")) == audited


def test_a_team_budget_holds_under_50_concurrent_requests_of_two_consumers(team):
    _team_budget_holds(team)


def test_a_team_budget_holds_on_the_database_counters_without_redis(team):
    _team_budget_holds(team, REDIS_URL="")


def test_a_route_budget_holds_under_50_concurrent_requests_and_leaves_other_routes_alone(team):
    """Ann's "opus" budget: her 50 concurrent opus requests stay within it while her 10 haiku requests,
    in the same burst, are neither held nor charged by it."""
    budget = Budget.objects.create(consumer=Consumer.objects.get(team=team.team, name__startswith="ann"),
                                   metric="tokens", limit=LIMIT, period="day", routes=["opus"])
    ann = team.keys[0]
    with running_gateway() as gateway:
        calls = [(ann, {**BODY, "stream": i % 2 == 1}) for i in range(50)]
        calls += [(ann, {**BODY, "model": "haiku"}) for _ in range(10)]
        responses = asyncio.run(fire(gateway.url, calls))
        opus, haiku = responses[:50], responses[50:]
        assert [r.status_code for r in haiku] == [200] * 10
        statuses = [r.status_code for r in opus]
        served = statuses.count(200)
        assert statuses.count(429) + served == 50, statuses
        assert 10 <= served <= LIMIT // ACTUAL, statuses
        assert_refused_by(opus, "this consumer's tokens budget")
        assert all("for route opus" in r.json()["error"]["message"] for r in opus if r.status_code == 429)
        audited = audited_tokens(opus)
        row = settled(budget, expected=audited)
        assert audited_tokens(haiku) == 10 * ACTUAL
    assert audited == served * ACTUAL <= LIMIT
    assert row.used == audited  # the haiku requests are not in it
    assert_no_hold_left(budget, row)
