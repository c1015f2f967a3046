"""Where Redis is (one server, Cluster, Sentinel) and what follows from it, without a real cluster (issue #18).

The real Redis Cluster and Sentinel tests are tests/faults/test_redis_cluster.py and test_redis_sentinel.py.
"""
from __future__ import annotations

import runpy
from datetime import date
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from redis.crc import key_slot

from budgets import counters
from budgets.holds import Admission, RateRule
from budgets.models import BudgetUsage
from proxy.sandbox import expected_usage
from tests.budgets.conftest import budget
from tests.proxy.client import chat
from tests.servers import free_port

SETTINGS = Path(__file__).resolve().parents[2] / "gateway_site" / "settings.py"
HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}


def rule(**fields) -> RateRule:
    return RateRule(**{"id": 7, "requests": 10, "tokens": None, "window_seconds": 60, "rejected_code": 429,
                       "rejected_msg": "", "owner": "key", **fields})


@pytest.mark.parametrize("team_id", [None, 3], ids=["consumer", "team"])
def test_every_key_of_one_admission_carries_its_hash_tag(team_id):
    admission = Admission(request_id="r", consumer_id=12, key_id=34, team_id=team_id)
    keys = [*counters.budget_keys(admission.slot, 1, date(2026, 12, 1)),
            *counters.budget_keys(admission.slot, 2, date(2026, 12, 1)),
            counters.token_window_key(admission.slot, 5, admission.owner_value("key"), 99),
            counters.request_window(rule(owner="key"), admission)[0],
            counters.request_window(rule(id=8, owner="consumer"), admission)[0]]
    tag = "{t3}" if team_id else "{c12}"
    assert all(tag in key for key in keys), keys
    assert len({key_slot(key.encode()) for key in keys}) == 1


def test_other_consumers_spread_over_the_slots():
    slots = {key_slot(counters.budget_keys(f"c{n}", 1, date(2026, 12, 1))[0].encode()) for n in range(100)}
    assert len(slots) > 90


def load_settings(monkeypatch, **env: str) -> dict:
    for name in ("REDIS_URL", "TOLLGATE_REDIS_CLUSTER_NODES", "TOLLGATE_REDIS_SENTINELS", "CELERY_BROKER_URL",
                 "CELERY_TASK_ALWAYS_EAGER", "TOLLGATE_REDIS_SENTINEL_SERVICE", "CELERY_BROKER_SENTINEL_SERVICE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS))


def test_settings_name_the_cache_backend_of_each_topology(monkeypatch):
    single = load_settings(monkeypatch, REDIS_URL="redis://127.0.0.1:6379/0")
    assert single["CACHES"]["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert single["CELERY_BROKER_URL"] == "redis://127.0.0.1:6379/0"
    cluster = load_settings(monkeypatch, TOLLGATE_REDIS_CLUSTER_NODES="10.0.0.1:7000, 10.0.0.2:7000",
                            CELERY_BROKER_URL="amqp://guest@127.0.0.1:5672//")
    assert cluster["TOLLGATE_REDIS_CLUSTER_NODES"] == ["10.0.0.1:7000", "10.0.0.2:7000"]
    assert cluster["CACHES"]["default"]["BACKEND"] == "gateway_site.lib.rediscache.RedisCache"
    assert cluster["CELERY_TASK_ALWAYS_EAGER"] is False
    sentinel = load_settings(monkeypatch, TOLLGATE_REDIS_SENTINELS="10.0.0.1:26379",
                             TOLLGATE_REDIS_SENTINEL_SERVICE="tollgate",
                             CELERY_BROKER_URL="sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379")
    assert sentinel["CACHES"]["default"]["BACKEND"] == "gateway_site.lib.rediscache.RedisCache"
    assert sentinel["CELERY_BROKER_TRANSPORT_OPTIONS"] == {"master_name": "tollgate"}


@pytest.mark.parametrize("env, message", [
    ({"REDIS_URL": "redis://r/0", "TOLLGATE_REDIS_CLUSTER_NODES": "c:7000"}, "only one of"),
    ({"TOLLGATE_REDIS_SENTINELS": "s:26379", "CELERY_TASK_ALWAYS_EAGER": "1"}, "SENTINEL_SERVICE"),
    ({"TOLLGATE_REDIS_CLUSTER_NODES": "c:7000"}, "CELERY_BROKER_URL"),
    ({"TOLLGATE_REDIS_CLUSTER_NODES": "c:7000", "CELERY_TASK_ALWAYS_EAGER": "1", "TOLLGATE_CACHE_PREFIX": "{x}"},
     "TOLLGATE_CACHE_PREFIX"),
], ids=["two topologies", "sentinel without service", "cluster without broker", "brace in prefix"])
def test_settings_refuse_an_ambiguous_redis(monkeypatch, env, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        load_settings(monkeypatch, **env)


@pytest.fixture
def unreachable_cluster():
    """A Cluster whose nodes do not answer, as during a failover seen from the gateway."""
    counters.outage.answered()
    with override_settings(REDIS_URL="", TOLLGATE_REDIS_CLUSTER_NODES=[f"127.0.0.1:{free_port()}"],
                           TOLLGATE_LIMITS_FAIL_OPEN=True):
        yield
    counters.outage.answered()


def test_a_failover_is_refused_even_when_failing_open(personas, alice, demo_route, unreachable_cluster):
    budget(personas.alice, metric="tokens", limit=100_000)
    response = chat(alice, HELLO)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "limits_unavailable"
    assert not BudgetUsage.objects.exists()


def test_an_outage_longer_than_a_failover_fails_open_when_configured(personas, alice, demo_route,
                                                                     unreachable_cluster, settings):
    settings.TOLLGATE_REDIS_FAILOVER_SECONDS = 0
    budget(personas.alice, metric="tokens", limit=100_000)
    response = chat(alice, HELLO)
    assert response.status_code == 200
    usage = expected_usage("openai", HELLO)
    assert BudgetUsage.objects.get().used == usage.prompt_tokens + usage.completion_tokens


@override_settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", TOLLGATE_LIMITS_FAIL_OPEN=True)
def test_one_redis_server_down_still_fails_open_at_once(personas, alice, demo_route):
    # Failover grace is for replicated topologies only: one server has no replica to wait for.
    counters.outage.answered()
    budget(personas.alice, metric="tokens", limit=100_000)
    assert chat(alice, HELLO).status_code == 200
    counters.outage.answered()
