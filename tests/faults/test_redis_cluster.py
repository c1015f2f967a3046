"""Tollgate's shared state on a real Redis Cluster, one master failing over (issue #18; docs/deployment.md).

Six redis-server processes in cluster mode (3 masters, 3 replicas, tests/redis_cluster.py) and two
gateways (separate gunicorn masters) on them and on the module's PostgreSQL database. The gateways
run with TOLLGATE_LIMITS_FAIL_OPEN=1, so the failover test also shows that a failover is refused
even by a gateway told to fail open.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from types import SimpleNamespace
from typing import TypeVar

import httpx
import pytest
from django.conf import settings
from django.db import connections
from django.db.models import F, Sum
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from audit.models import AuditEvent
from budgets import counters
from budgets.holds import redis_slot
from budgets.keys import key_issue, key_revoke
from budgets.models import ApiKey, Budget, BudgetHistory, BudgetUsage, Consumer, RateLimit
from budgets.periods import window_at
from budgets.selectors import budget_usage_report
from gateway_site.celery import app as celery_app
from gateway_site.lib.sharedcache import cache
from gateway_site.status import redis_check
from proxy.admission import estimate_prompt_tokens
from proxy.sandbox import expected_usage
from tests.faults.conftest import Load, wait_for
from tests.faults.seed import PREFIX, UPSTREAM_KEY, seed
from tests.redis_cluster import ClusterHandle, redis_cluster  # noqa: F401 - the module's cluster fixture
from tests.servers import (
    celery_worker,
    free_port,
    gateway_command,
    sandbox_command,
    server_env,
    subprocess_server,
)

# Not transactional: a transactional test's flush would take the gateways' routes away. What the
# gateways must see is written through committed() instead.
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.django_db,
    pytest.mark.skipif(not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"),
                       reason="needs DATABASE_URL=postgres://..."),
]

PREFIX_CACHE = f"tgcluster{os.getpid()}"
T = TypeVar("T")
BODY = {"model": f"{PREFIX}demo", "messages": [{"role": "user", "content": "Count the tokens. " * 10}],
        "max_tokens": 5}


@pytest.fixture(scope="module")
def gateways(server_database, django_db_blocker, redis_cluster: ClusterHandle) -> Iterator[SimpleNamespace]:  # noqa: F811
    """The sandbox and two gateways (one worker each) on the cluster."""
    sandbox_port = free_port()
    with django_db_blocker.unblock():
        seeded = seed(sandbox_port)
    env = server_env(DATABASE_URL=server_database, TOLLGATE_PROVIDER_FAULTS_UPSTREAM_KEY=UPSTREAM_KEY,
                     TOLLGATE_CACHE_PREFIX=PREFIX_CACHE,
                     TOLLGATE_LIMITS_FAIL_OPEN="1", TOLLGATE_BREAKER_FAILURES="2",
                     TOLLGATE_BREAKER_RECHECK_SECONDS="0.2", **redis_cluster.nodes_env())
    ports = [free_port(), free_port()]
    servers = [subprocess_server(sandbox_command(sandbox_port, "--require-key", UPSTREAM_KEY),
                                 health_url=f"http://127.0.0.1:{sandbox_port}/_sandbox/health", env=env,
                                 log_name="cluster-sandbox")]
    servers += [subprocess_server(gateway_command(port, workers=1), health_url=f"http://127.0.0.1:{port}/healthz",
                                  env=env, log_name="cluster-gateway") for port in ports]
    with ExitStack() as stack:
        # Started side by side (each takes seconds to import Django); stopped by the stack.
        with ThreadPoolExecutor(len(servers)) as pool:
            started = [pool.submit(server.__enter__) for server in servers]
        for server in servers:
            stack.push(server.__exit__)  # a server whose start failed has nothing to stop
        processes = [future.result() for future in started]
        # Stopped side by side too: all are told to stop before the stack waits for each.
        for process in processes:
            stack.callback(process.terminate)
        yield SimpleNamespace(urls=[f"http://127.0.0.1:{port}" for port in ports], key=seeded.key,
                              cluster=redis_cluster)


@contextmanager
def on_cluster(cluster: ClusterHandle) -> Iterator[None]:
    """This test process's shared cache and counters on the cluster, under the gateways' prefix."""
    caches = {"default": {"BACKEND": "gateway_site.lib.rediscache.RedisCache", "LOCATION": "",
                          "KEY_PREFIX": PREFIX_CACHE}}
    with override_settings(REDIS_URL="", TOLLGATE_REDIS_CLUSTER_NODES=cluster.startup_nodes.split(","),
                           CACHES=caches):
        yield


def committed(write: Callable[[], T]) -> T:
    """Run `write` on a database connection of its own, in autocommit, so that the gateways see it
    at once (this test's connection is inside the test's transaction) and its on_commit work runs."""
    def run() -> T:
        try:
            return write()
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def new_consumer(name: str, **budget_fields) -> SimpleNamespace:
    def create() -> SimpleNamespace:
        consumer = Consumer.objects.create(name=f"{PREFIX}{name}-{free_port()}")
        budget = Budget.objects.create(consumer=consumer, **{"metric": "tokens", "limit": 10**9, "period": "day",
                                                             **budget_fields})
        return SimpleNamespace(consumer=consumer, budget=budget,
                               key=key_issue(consumer=consumer, name="c").plaintext)

    return committed(create)


def budget_key(budget: Budget) -> str:
    with override_settings(CACHES={"default": {**settings.CACHES["default"], "KEY_PREFIX": PREFIX_CACHE}}):
        return counters.budget_keys(counters.budget_slot(budget), budget.pk, timezone.now().date())[0]


def live_usage(cluster: ClusterHandle, budget: Budget) -> tuple[int, int]:
    client = cluster.client()
    try:
        used, reserved = client.hmget(budget_key(budget), "used", "reserved")
    finally:
        client.close()
    return int(used or 0), int(reserved or 0)


def audited_tokens(consumer: Consumer) -> int:
    totals = AuditEvent.objects.filter(consumer_name=consumer.name).aggregate(
        tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
    return totals["tokens"] or 0


def chat(url: str, key: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body or BODY, headers={"authorization": f"Bearer {key}"},
                      timeout=30)


async def fire(urls: list[str], key: str, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        async def one(n: int) -> httpx.Response:
            body = {**BODY, "stream": n % 2 == 1}
            response = await client.post(f"{urls[n % len(urls)]}/v1/chat/completions", json=body,
                                         headers={"authorization": f"Bearer {key}"})
            await response.aread()
            return response

        return await asyncio.gather(*(one(n) for n in range(count)))


def test_the_keys_of_one_admission_share_a_slot(gateways):
    """A budget of the consumer, one of its key, tokens and requests per window: one script, one slot."""
    owner = new_consumer("slots")
    def limits() -> Budget:
        key = ApiKey.objects.get(consumer=owner.consumer)
        RateLimit.objects.create(consumer=owner.consumer, requests=100, window_seconds=60)
        RateLimit.objects.create(key=key, tokens=100_000, window_seconds=60)
        return Budget.objects.create(key=key, metric="requests", limit=1000, period="day")

    key_budget = committed(limits)
    response = chat(gateways.urls[0], owner.key)
    assert response.status_code == 200, response.text
    assert response.headers["x-ratelimit-limit-requests"]

    client = gateways.cluster.client()
    try:
        tag = "{" + redis_slot(consumer_id=owner.consumer.pk) + "}"
        written = list(client.scan_iter(match=f"{PREFIX_CACHE}:*{tag}*"))
    finally:
        client.close()
    kinds = {k.split(":")[1] for k in written}
    assert kinds == {"budget", "tokens", "requests"}, written
    assert budget_key(owner.budget) in written and budget_key(key_budget) in written
    slots = {gateways.cluster.keyslot(k) for k in written}
    assert len(slots) == 1, {k: gateways.cluster.keyslot(k) for k in written}


def test_budgets_hold_across_two_gateways_under_concurrent_requests(gateways):
    reserve = estimate_prompt_tokens(BODY) + BODY["max_tokens"]
    usage = expected_usage("openai", BODY)
    actual = usage.prompt_tokens + usage.completion_tokens
    owner = new_consumer("concurrent", limit=8 * reserve)  # admits about 8 of 40
    responses = asyncio.run(fire(gateways.urls, owner.key, 40))
    statuses = [r.status_code for r in responses]
    served = statuses.count(200)
    assert statuses.count(429) + served == 40, statuses
    assert 8 <= served <= owner.budget.limit // actual, statuses
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 429} == {"budget_exceeded"}
    wait_for(lambda: BudgetUsage.objects.filter(budget=owner.budget, used=served * actual).exists(), timeout=10)
    assert live_usage(gateways.cluster, owner.budget) == (served * actual, 0)
    # What reads the live counters outside a request finds them on the cluster too: the usage
    # report (admin, API, metrics) and the reset job; and the health page reaches the cluster.
    with on_cluster(gateways.cluster):
        [row] = budget_usage_report(consumer=owner.consumer)
        assert (row.used, row.reserved) == (served * actual, 0)
        assert counters.live_used_reader()(owner.budget, row.period_start) == served * actual
        check = redis_check()
        assert check is not None and check.ok, check


def test_a_revoked_key_stops_working_on_both_gateways(gateways):
    owner = new_consumer("revoked")
    for url in gateways.urls:
        assert chat(url, owner.key).status_code == 200
    with on_cluster(gateways.cluster):  # as the admin's process revokes it, on the cluster
        committed(lambda: key_revoke(key=ApiKey.objects.get(consumer=owner.consumer)))
    for url in gateways.urls:
        wait_for(lambda url=url: chat(url, owner.key).status_code == 401, timeout=10, interval=0.2)


def test_the_cache_spreads_its_keys_over_the_cluster(gateways):
    names = [f"cache-test:{n}" for n in range(30)]
    with on_cluster(gateways.cluster):
        cache.set_many({name: {"n": n} for n, name in enumerate(names)}, timeout=60)
        assert cache.get_many([*names, "cache-test:missing"]) == {name: {"n": n} for n, name in enumerate(names)}
        assert cache.add("cache-test:counter", 1) and not cache.add("cache-test:counter", 5)
        assert cache.incr("cache-test:counter", 2) == 3
        cache.delete_many(names)
        assert cache.get_many(names) == {}
        stored = [f"{PREFIX_CACHE}:1:{name}" for name in names]
    assert len({gateways.cluster.master_of_key(key) for key in stored}) == 3  # every master held some


def breaker_states(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {s.labels["deployment"]: s.value for family in text_string_to_metric_families(text)
            if family.name == "tollgate_circuit_breaker_state" for s in family.samples}


def test_a_breaker_opened_through_one_gateway_is_seen_by_the_other(gateways):
    owner = new_consumer("breaker")
    hang = f"{PREFIX}hang/up-hang"
    assert breaker_states(gateways.urls[1]).get(hang) == 0
    # The `hang` deployment times out; each request fails over to the sandbox and is served.
    for _ in range(2):
        assert chat(gateways.urls[0], owner.key, {**BODY, "model": f"{PREFIX}hang"}).status_code == 200
    assert breaker_states(gateways.urls[1])[hang] == 2  # open, as the other gateway reads it


def test_a_master_failing_over_is_refused_then_served_with_counters_intact(gateways):
    owner = new_consumer("failover")
    cluster = gateways.cluster
    master = cluster.masters().index(cluster.master_of_key(budget_key(owner.budget)))
    with Load(gateways.urls[0], owner.key, model=f"{PREFIX}demo", clients=3) as load:
        wait_for(lambda: sum(o.answered for o in load.outcomes) >= 5, timeout=15)
        down_at = time.monotonic()
        # The replica's link is cut for 0.5 s, then the master is killed: what the master acknowledged
        # in that time (holds, charges) is lost, as with a replication lag of 0.5 s. Returns once the replica
        # serves the slots.
        cluster.failover(master, unreplicated_seconds=0.5)
        up_at = time.monotonic()
        recovered = wait_for(lambda: any(o.answered for o in load.between(up_at, float("inf"))), timeout=15)
        time.sleep(0.5)
    outcomes = load.outcomes
    during = [o for o in outcomes if down_at < o.started and o.ended < up_at]
    print(f"{len(outcomes)} requests, {len(during)} during the failover ({up_at - down_at:.2f}s), "
          f"served again {recovered:.2f}s after it")
    refused = [o for o in during if (o.status, o.code) == (503, "limits_unavailable")]
    # Refused even though the gateway fails open: never served unmetered while failing over.
    assert refused, {(o.status, o.code) for o in during}
    assert all(o.answered or o in refused for o in during), {(o.status, o.code) for o in during}
    assert all(o.status is not None for o in outcomes)

    # Counters intact: every answered request charged once, in the database copy and on the new master
    # (whose lost charges came back from the database copy: budgets.counters re-seeds after a failover).
    answered = {o.request_id for o in outcomes if o.answered}
    assert answered <= set(AuditEvent.objects.values_list("request_id", flat=True))
    audited = audited_tokens(owner.consumer)
    wait_for(lambda: BudgetUsage.objects.get(budget=owner.budget).used == audited, timeout=10)
    used, _reserved = live_usage(cluster, owner.budget)
    assert used == audited


RABBITMQ = "amqp://guest@127.0.0.1:5672//"


def rabbitmq_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not rabbitmq_up(), reason="RabbitMQ does not answer on 127.0.0.1:5672")
def test_a_celery_worker_on_rabbitmq_closes_periods_with_the_cluster_s_figures(gateways, server_database):
    """Celery cannot use the cluster as its broker; with RabbitMQ, its jobs still read the cluster."""
    owner = new_consumer("celery")
    window = window_at("day", "UTC", timezone.now() - timedelta(days=1))
    committed(lambda: BudgetUsage.objects.create(budget=owner.budget, period_start=window.period_start,
                                                 starts_at=window.starts_at, ends_at=window.ends_at, used=100))
    # The cluster is ahead of the database copy (charges of a worker killed before its mirror wrote them).
    client = gateways.cluster.client()
    with override_settings(CACHES={"default": {**settings.CACHES["default"], "KEY_PREFIX": PREFIX_CACHE}}):
        key = counters.budget_keys(counters.budget_slot(owner.budget), owner.budget.pk, window.period_start)[0]
    client.hset(key, "used", 150)
    client.close()
    queue = f"tgcluster{os.getpid()}"
    env = server_env(DATABASE_URL=server_database, TOLLGATE_CACHE_PREFIX=PREFIX_CACHE, TOLLGATE_CELERY_QUEUE=queue,
                     **gateways.cluster.nodes_env(celery_broker_url=RABBITMQ))
    with celery_worker(env):
        with celery_app.connection_for_write(RABBITMQ) as connection:
            celery_app.send_task("budgets.tasks.budget_reset", queue=queue, connection=connection)
        wait_for(lambda: BudgetHistory.objects.filter(budget=owner.budget).exists(), timeout=30, interval=0.2)
    assert BudgetHistory.objects.get(budget=owner.budget).used == 150
