"""Every token a provider bills is charged to someone (issue #16), through the real server.

One sandbox and TWO gateway nodes (separate gunicorn servers, one uvicorn worker each, sharing
PostgreSQL and Redis, as two machines behind a load balancer would), seeded once for the module:
each test has its own consumer, so their budgets never meet.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest

from audit.models import AuditEvent
from budgets.models import BudgetUsage
from proxy.admission import estimate_prompt_tokens
from proxy.sandbox import expected_usage
from tests.budgets.conftest import requires_postgres_and_redis
from tests.servers import (
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
                                       api_key_env="TOLLGATE_PROVIDER_MONEY_UPSTREAM_KEY", **fields)

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
    route("capped", "oai", "money-gpt", default_max_tokens=64, max_output_tokens=50)
    route("unpriced", "oai", "money-unpriced-model")
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
        tight=consumer("tight", {"metric": "tokens", "limit": 3_000}),
        many=consumer("many", {"metric": "tokens", "limit": 5_000}),
        dollar=consumer("dollar", {"metric": "cost_usd", "limit": 1_000_000}),
        free=consumer("free"),
    )


@pytest.fixture(scope="module")
def money(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    """Two gateway nodes on the module's own database (server_database): their rows go with it."""
    sandbox_port, node_a, node_b = free_port(), free_port(), free_port()
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    with django_db_blocker.unblock():
        seeded = _seed(sandbox)
    env = server_env(DATABASE_URL=server_database, TOLLGATE_PROVIDER_MONEY_UPSTREAM_KEY=UPSTREAM_KEY)
    with subprocess_server(sandbox_command(sandbox_port), health_url=f"{sandbox}/_sandbox/health",
                           env=env, log_name="sandbox"), \
         subprocess_server(gateway_command(node_a, workers=1), health_url=f"http://127.0.0.1:{node_a}/healthz",
                           env=env, log_name="gateway-a"), \
         subprocess_server(gateway_command(node_b, workers=1), health_url=f"http://127.0.0.1:{node_b}/healthz",
                           env=env, log_name="gateway-b"):
        yield SimpleNamespace(nodes=[f"http://127.0.0.1:{node_a}", f"http://127.0.0.1:{node_b}"],
                              sandbox=sandbox, blocker=django_db_blocker, **vars(seeded))


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


# --- 3. The reservation: the worst case that can really happen --------------------------------------


async def _fire(nodes: list[str], key: str, bodies: list[dict]) -> list[httpx.Response]:
    """All at once, alternating between the two nodes; no keep-alive, so each request is its own."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def one(i: int, body: dict) -> httpx.Response:
            response = await client.post(nodes[i % len(nodes)] + "/v1/chat/completions", json=body,
                                         headers=_headers("openai", key))
            await response.aread()
            return response

        return await asyncio.gather(*(one(i, body) for i, body in enumerate(bodies)))


def test_two_nodes_never_overspend_a_small_token_budget(money):
    limit = money.tight.budgets[0].limit
    bodies = [{"model": PREFIX + "gpt", "max_tokens": 20, "stream": i % 3 == 0,
               "messages": [{"role": "user", "content": f"Say hello number {i}"}]} for i in range(120)]
    responses = asyncio.run(_fire(money.nodes, money.tight.key, bodies))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) + statuses.count(429) == len(bodies), statuses
    served = [(b, r) for b, r in zip(bodies, responses, strict=True) if r.status_code == 200]
    assert 50 <= len(served) < len(bodies), statuses
    for body, response in served:
        assert response.headers["x-ratelimit-reserved-tokens"] == str(estimate_prompt_tokens(body) + 20)
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "budget_exceeded"
    request_ids = [r.headers["x-request-id"] for _, r in served]
    rows = _audit_rows(money, request_ids)
    audited = sum(row.prompt_tokens + row.completion_tokens for row in rows.values())
    assert all(row.usage_source == "provider" for row in rows.values())
    # The overspend error of two nodes under a burst: none. Recorded in docs/budgets.md.
    print(f"two nodes, {len(bodies)} requests, budget {limit}: served {len(served)}, audited {audited} tokens, "
          f"overspend {audited - limit}")
    assert audited <= limit
    assert _used(money, money.tight.budgets[0], at_least=audited) == audited


def test_n_answers_are_reserved_n_times(money):
    body = {"model": PREFIX + "gpt", "messages": [{"role": "user", "content": "Many answers"}], "max_tokens": 1000}
    with httpx.Client(base_url=money.nodes[1], timeout=30) as client:
        headers = _headers("openai", money.many.key)
        refused = client.post("/v1/chat/completions", json={**body, "n": 16}, headers=headers)
        one = client.post("/v1/chat/completions", json=body, headers=headers)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
    assert "16,0" in refused.json()["error"]["message"]  # may use up to 16,0xx tokens
    assert one.status_code == 200, one.text
    assert one.headers["x-ratelimit-reserved-tokens"] == str(estimate_prompt_tokens(body) + 1000)


def test_conflicting_output_bounds_are_refused(money):
    body = {"model": PREFIX + "gpt", "messages": [{"role": "user", "content": "Hi"}],
            "max_completion_tokens": 1, "max_tokens": 100_000}
    response = httpx.post(money.nodes[0] + "/v1/chat/completions", json=body,
                          headers=_headers("openai", money.free.key), timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "conflicting_max_tokens"


def test_every_upstream_request_carries_an_output_bound(money):
    httpx.post(money.sandbox + "/_sandbox/reset")
    hello = [{"role": "user", "content": "Bound me"}]
    # (caller, route, client's fields) -> (upstream field, value)
    cases = [
        ("openai", "gpt", {}, "max_tokens", 64),  # the route's default, in the sandbox adapter's field
        ("openai", "gpt", {"max_completion_tokens": 30}, "max_completion_tokens", 30),
        ("openai", "capped", {"max_completion_tokens": 500}, "max_completion_tokens", 50),
        ("openai", "capped", {}, "max_tokens", 50),  # the default (64) capped by the route (50)
        ("openai", "claude", {}, "max_tokens", 64),  # translated to Anthropic
        ("anthropic", "claude", {"max_tokens": 1000}, "max_tokens", 1000),
        ("anthropic", "capped", {"max_tokens": 5000}, "max_tokens", 50),  # translated to OpenAI
    ]
    with httpx.Client(timeout=30) as client:
        for caller, route, fields, _, _ in cases:
            for stream in (False, True):
                body = {"model": PREFIX + route, "messages": hello, "stream": stream, **fields}
                if caller == "anthropic":
                    body.setdefault("max_tokens", 100)
                response = client.post(money.nodes[0] + _path(caller), json=body,
                                       headers=_headers(caller, money.free.key))
                assert response.status_code == 200, response.text
    log = httpx.get(money.sandbox + "/_sandbox/requests", params={"limit": 200}).json()["requests"]
    seen = list(reversed(log))
    assert len(seen) == 2 * len(cases)
    for (caller, route, fields, field, value), (plain, streamed) in zip(cases, zip(seen[::2], seen[1::2], strict=True),
                                                                         strict=True):
        for entry in (plain, streamed):
            assert entry["body"].get(field) == value, (caller, route, fields, entry["body"])


# --- 4. Unpriced is not free -------------------------------------------------------------------------


def test_an_unpriced_model_is_refused_under_a_cost_budget_and_served_without_one(money):
    body = {"model": PREFIX + "unpriced", "messages": [{"role": "user", "content": "What do I cost?"}]}
    with httpx.Client(base_url=money.nodes[0], timeout=30) as client:
        refused = client.post("/v1/chat/completions", json=body, headers=_headers("openai", money.dollar.key))
        served = client.post("/v1/chat/completions", json=body, headers=_headers("openai", money.free.key))
        anthropic = client.post("/v1/messages", json={**body, "max_tokens": 10},
                                headers=_headers("anthropic", money.dollar.key))
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("model_not_priced", "model")
    assert "money-unpriced-model" in error["message"] and "price" in error["message"]
    assert anthropic.status_code == 400 and anthropic.json()["error"]["type"] == "invalid_request_error"
    assert served.status_code == 200, served.text
    rows = _audit_rows(money, [refused.headers["x-request-id"], served.headers["x-request-id"]])
    assert rows[refused.headers["x-request-id"]].error_class == "model_not_priced"
    assert rows[refused.headers["x-request-id"]].attempts == 0  # never sent upstream
    assert rows[served.headers["x-request-id"]].cost_micros == 0


# --- 2. Usage that never came: the client left ------------------------------------------------------


async def _leave_after_first_content(url: str, caller: str, key: str, body: dict) -> str:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        async with client.stream("POST", url + _path(caller), json=body, headers=_headers(caller, key)) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if '"content":"S' in line or '"text_delta"' in line:
                    break  # the first content chunk: leave (the response is closed, the connection dropped)
            return response.headers["x-request-id"]


def test_streams_left_after_their_first_chunk_are_charged_their_prompt(money):
    before = httpx.get(money.sandbox + "/_sandbox/stats").json()["client_disconnects"]
    cases = [("openai", "slow-gpt", i) for i in range(5)] + [("anthropic", "slow-claude", 5)]
    bodies = [{"model": PREFIX + route, "max_tokens": 4000, "stream": True,
               "messages": [{"role": "user", "content": words(2000, salt=i)}]} for _, route, i in cases]

    async def leave_all() -> list[str]:
        return await asyncio.gather(*(
            _leave_after_first_content(money.nodes[i % 2], caller, money.left.key, body)
            for i, ((caller, _, _), body) in enumerate(zip(cases, bodies, strict=True))))

    request_ids = asyncio.run(leave_all())
    rows = _audit_rows(money, request_ids, timeout=20)
    assert len(rows) == len(cases)
    charged = 0
    for (caller, _, _), body, request_id in zip(cases, bodies, request_ids, strict=True):
        row = rows[request_id]
        prompt = expected_usage(caller, body).prompt_tokens
        assert row.error_class == "client_disconnected" and row.usage_source == "estimated"
        assert row.prompt_tokens >= prompt, (caller, row.prompt_tokens, prompt)
        if caller == "anthropic":
            assert row.prompt_tokens == prompt  # message_start said it before the client left
        assert row.completion_tokens >= 1  # the first content chunk reached the client
        assert row.cost_micros > 0
        charged += row.prompt_tokens + row.completion_tokens
    assert _used(money, money.left.budgets[0], at_least=charged) >= charged
    # The provider's work was cancelled with the client (the sandbox saw each stream's reader go).
    deadline = time.monotonic() + 10
    while httpx.get(money.sandbox + "/_sandbox/stats").json()["client_disconnects"] < before + len(cases):
        assert time.monotonic() < deadline, "the upstream streams were not cancelled"
        time.sleep(0.2)
