"""Every token a provider bills is charged to someone (issue #16), through the real server.

One sandbox and TWO gateway nodes (separate gunicorn servers, one uvicorn worker each, sharing
PostgreSQL and Redis, as two machines behind a load balancer would), seeded once for the module:
each test has its own consumer, so their budgets never meet.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
from django.db import connection

from audit.models import AuditEvent
from budgets.models import BudgetUsage
from proxy.sandbox import expected_usage
from tests.budgets.conftest import requires_postgres_and_redis
from tests.servers import (
    database_url_for,
    free_port,
    gateway_command,
    sandbox_command,
    server_env,
    subprocess_server,
)

pytestmark = [pytest.mark.e2e, requires_postgres_and_redis, pytest.mark.django_db]

UPSTREAM_KEY = "sk-money-upstream"
PREFIX = "money-"
# List prices (micro-dollars per million tokens), as a provider publishes them.
GPT = {"input": 2_500_000, "cached": 250_000, "output": 10_000_000}
CLAUDE = {"input": 3_000_000, "cached": 300_000, "write": 3_750_000, "output": 15_000_000}
WORDS = "tokens cost money and every one of them is charged to someone ".split()


def words(count: int, salt: int = 0) -> str:
    return " ".join(WORDS[(i + salt) % len(WORDS)] for i in range(count))


def _seed(sandbox: str) -> SimpleNamespace:
    from budgets.keys import key_issue
    from budgets.models import Budget, Consumer, ModelPrice
    from proxy.models import Deployment, ModelRoute, Provider

    cached = {"x-sandbox-cache-read-percent": "90"}

    def provider(name: str, kind: str, **fields) -> Provider:
        base = f"{sandbox}/v1" if kind in ("sandbox", "openai") else sandbox
        return Provider.objects.create(name=PREFIX + name, kind=kind, base_url=base,
                                       api_key_env="MONEY_UPSTREAM_KEY", **fields)

    providers = {
        "oai-cached": provider("oai-cached", "sandbox", extra_headers=cached),
        "claude-cached": provider("claude-cached", "anthropic", extra_headers=cached),
        "oai": provider("oai", "sandbox", extra_headers={"x-sandbox-latency-ms": "30"}),
        "claude": provider("claude", "anthropic"),
        "oai-slow": provider("oai-slow", "sandbox", extra_headers={"x-sandbox-chunk-delay-ms": "300",
                                                                   "x-sandbox-chunks": "40"}),
        "claude-slow": provider("claude-slow", "anthropic", extra_headers={"x-sandbox-chunk-delay-ms": "300",
                                                                           "x-sandbox-chunks": "40"}),
    }

    def route(model: str, provider_name: str, upstream: str, **fields) -> None:
        created = ModelRoute.objects.create(model=PREFIX + model, **fields)
        Deployment.objects.create(route=created, provider=providers[provider_name], upstream_model=upstream)

    route("cached-gpt", "oai-cached", "money-gpt")
    route("cached-claude", "claude-cached", "money-claude")
    route("gpt", "oai", "money-gpt", default_max_tokens=64)
    route("claude", "claude", "money-claude", default_max_tokens=64)
    route("slow-gpt", "oai-slow", "money-gpt")
    route("slow-claude", "claude-slow", "money-claude")
    ModelPrice.objects.create(model="money-gpt", input_per_million=GPT["input"],
                              cached_input_per_million=GPT["cached"], output_per_million=GPT["output"])
    ModelPrice.objects.create(model="money-claude", input_per_million=CLAUDE["input"],
                              cached_input_per_million=CLAUDE["cached"],
                              cache_write_per_million=CLAUDE["write"], output_per_million=CLAUDE["output"])

    def consumer(name: str, *budgets: dict) -> SimpleNamespace:
        created = Consumer.objects.create(name=PREFIX + name)
        made = [Budget.objects.create(consumer=created, period="day", **b) for b in budgets]
        return SimpleNamespace(consumer=created, key=key_issue(consumer=created, name="e2e").plaintext,
                               budgets=made)

    return SimpleNamespace(
        cached=consumer("cached", {"metric": "cost_usd", "limit": 100_000_000},
                        {"metric": "tokens", "limit": 10_000_000}),
        left=consumer("left", {"metric": "tokens", "limit": 10_000_000},
                      {"metric": "cost_usd", "limit": 100_000_000}),
    )


def _unseed() -> None:
    from budgets.models import Consumer, ModelPrice
    from proxy.models import ModelRoute, Provider

    ModelRoute.objects.filter(model__startswith=PREFIX).delete()
    Provider.objects.filter(name__startswith=PREFIX).delete()
    Consumer.objects.filter(name__startswith=PREFIX).delete()
    ModelPrice.objects.filter(model__startswith="money-").delete()


@pytest.fixture(scope="module")
def money(django_db_setup, django_db_blocker) -> Iterator[SimpleNamespace]:
    sandbox_port, node_a, node_b = free_port(), free_port(), free_port()
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    with django_db_blocker.unblock():
        seeded = _seed(sandbox)
        database_url = database_url_for(connection.settings_dict)
    env = server_env(DATABASE_URL=database_url, MONEY_UPSTREAM_KEY=UPSTREAM_KEY)
    try:
        with subprocess_server(sandbox_command(sandbox_port), health_url=f"{sandbox}/_sandbox/health",
                               env=env, log_name="sandbox"), \
             subprocess_server(gateway_command(node_a, workers=1), health_url=f"http://127.0.0.1:{node_a}/healthz",
                               env=env, log_name="gateway-a"), \
             subprocess_server(gateway_command(node_b, workers=1), health_url=f"http://127.0.0.1:{node_b}/healthz",
                               env=env, log_name="gateway-b"):
            yield SimpleNamespace(nodes=[f"http://127.0.0.1:{node_a}", f"http://127.0.0.1:{node_b}"],
                                  sandbox=sandbox, blocker=django_db_blocker, **vars(seeded))
    finally:
        with django_db_blocker.unblock():
            _unseed()


def _headers(caller: str, key: str) -> dict[str, str]:
    if caller == "anthropic":
        return {"x-api-key": key, "anthropic-version": "2023-06-01"}
    return {"authorization": f"Bearer {key}"}


def _path(caller: str) -> str:
    return "/v1/messages" if caller == "anthropic" else "/v1/chat/completions"


def _audit_rows(money, request_ids: list[str], *, timeout: float = 10.0) -> dict[str, AuditEvent]:
    deadline = time.monotonic() + timeout
    while True:
        with money.blocker.unblock():
            rows = {e.request_id: e for e in AuditEvent.objects.filter(request_id__in=request_ids)}
        if len(rows) == len(request_ids) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _used(money, budget, *, at_least: int = 0, timeout: float = 5.0) -> int:
    """The budget's settled usage from the database copy (written by each node every 0.5 s)."""
    deadline = time.monotonic() + timeout
    while True:
        with money.blocker.unblock():
            used = sum(BudgetUsage.objects.filter(budget=budget).values_list("used", flat=True))
        if used >= at_least or time.monotonic() > deadline:
            return used
        time.sleep(0.2)


# --- 1. Token classes: a mostly cached prompt is charged at its list price ----------------------


def _list_price(upstream_wire: str, usage) -> int:
    """What the provider's price list says the usage costs, in micro-dollars (fractions kept)."""
    prices = GPT if upstream_wire == "openai" else CLAUDE
    read = usage.cache_read_tokens
    total = ((usage.prompt_tokens - read) * prices["input"] + read * prices["cached"]
             + usage.completion_tokens * prices["output"])
    return total / 1_000_000


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_mostly_cached_prompt_is_charged_its_list_price(money, stream):
    prompt = words(2000)
    request_ids, expected = [], {}
    with httpx.Client(base_url=money.nodes[0], timeout=30) as client:
        for caller, route in itertools.product(("openai", "anthropic"), ("cached-gpt", "cached-claude")):
            body = {"model": PREFIX + route, "max_tokens": 200, "stream": stream,
                    "messages": [{"role": "user", "content": f"{caller} {stream} {prompt}"}]}
            response = client.post(_path(caller), json=body, headers=_headers(caller, money.cached.key))
            assert response.status_code == 200, response.text
            response.read()
            request_id = response.headers["x-request-id"]
            request_ids.append(request_id)
            # The sandbox counts the same conversation the same in every format, translated or not.
            usage = expected_usage(caller, body, cache_read_percent=90)
            expected[request_id] = ("openai" if route == "cached-gpt" else "anthropic", usage)
    rows = _audit_rows(money, request_ids)
    for request_id, (wire, usage) in expected.items():
        row = rows[request_id]
        assert row.usage_source == "provider"
        assert (row.prompt_tokens, row.completion_tokens) == (usage.prompt_tokens, usage.completion_tokens)
        list_price = _list_price(wire, usage)
        assert abs(row.cost_micros - list_price) <= 0.01 * list_price, (wire, row.cost_micros, list_price)
    # The cost budget was charged what the audit log says, no more and no less.
    with money.blocker.unblock():
        audited = sum(AuditEvent.objects.filter(consumer_id=money.cached.consumer.pk)
                      .values_list("cost_micros", flat=True))
    assert _used(money, money.cached.budgets[0], at_least=audited) == audited
