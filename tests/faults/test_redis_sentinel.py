"""Tollgate on a Sentinel-watched Redis: a master killed, its replica promoted (issue #18; docs/deployment.md).

A master, its replica and one sentinel (quorum 1) on free ports, without persistence; the gateway
in-process, told to fail open, so the test also shows that a failover is refused anyway.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from django.test import override_settings
from django.utils import timezone

from budgets import counters
from budgets.models import Budget, BudgetUsage
from proxy.sandbox import expected_usage
from tests.faults.conftest import wait_for
from tests.proxy.client import chat
from tests.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

SERVICE = "tollgate-test"
HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1,
                       decode_responses=True)


@pytest.fixture(scope="module")
def sentinel_group(tmp_path_factory) -> Iterator[SimpleNamespace]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    directory: Path = tmp_path_factory.mktemp("sentinel")
    master, replica, sentinel = free_port(), free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(directory)]
    config = directory / "sentinel.conf"
    config.write_text(f"port {sentinel}\nbind 127.0.0.1\ndir {directory}\n"
                      f"sentinel monitor {SERVICE} 127.0.0.1 {master} 1\n"
                      f"sentinel down-after-milliseconds {SERVICE} 1000\n"
                      f"sentinel failover-timeout {SERVICE} 5000\n")
    processes: dict[int, subprocess.Popen] = {}

    def spawn(port: int, *args: str) -> None:
        processes[port] = subprocess.Popen(["redis-server", *args], stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL, start_new_session=True)

    try:
        spawn(master, "--port", str(master), *common)
        spawn(replica, "--port", str(replica), "--replicaof", "127.0.0.1", str(master), *common)
        wait_for(lambda: _ok(lambda: _client(replica).info("replication")["master_link_status"] == "up"),
                 timeout=15)
        spawn(sentinel, str(config), "--sentinel")
        # The sentinel knows the replica before it can promote it.
        wait_for(lambda: _ok(lambda: _client(sentinel).execute_command("SENTINEL", "REPLICAS", SERVICE)),
                 timeout=15)

        def kill(port: int) -> None:
            processes[port].send_signal(signal.SIGKILL)
            processes[port].wait(timeout=10)

        def master_port() -> int:
            return int(_client(sentinel).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1])

        yield SimpleNamespace(master=master, replica=replica, sentinel=sentinel, kill=kill,
                              master_port=master_port)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)


def _ok(probe) -> bool:
    try:
        return bool(probe())
    except (redis.RedisError, OSError):
        return False


def test_a_master_failing_over_is_refused_then_served_with_counters_intact(
        sentinel_group, personas, demo_route, settings):
    settings.TOLLGATE_BUDGET_MIRROR_SECONDS = 0
    prefix = f"tgsentinel{free_port()}"
    caches = {"default": {"BACKEND": "gateway_site.lib.rediscache.RedisCache", "LOCATION": "", "KEY_PREFIX": prefix}}
    budget = Budget.objects.create(consumer=personas.alice, metric="tokens", limit=100_000, period="day")
    usage = expected_usage("openai", HELLO)
    tokens = usage.prompt_tokens + usage.completion_tokens
    hash_key = f"{prefix}:budget:{{c{personas.alice.pk}}}:{budget.pk}:{timezone.now().date().isoformat()}"
    counters.outage.answered()
    with override_settings(REDIS_URL="", TOLLGATE_REDIS_SENTINELS=[f"127.0.0.1:{sentinel_group.sentinel}"],
                           TOLLGATE_REDIS_SENTINEL_SERVICE=SERVICE, CACHES=caches, TOLLGATE_LIMITS_FAIL_OPEN=True):
        assert chat(personas.alice_key, HELLO).status_code == 200
        assert int(_client(sentinel_group.master).hget(hash_key, "used")) == tokens
        wait_for(lambda: _client(sentinel_group.replica).hget(hash_key, "used") == str(tokens), timeout=5)

        sentinel_group.kill(sentinel_group.master)
        refused = chat(personas.alice_key, HELLO)
        assert refused.status_code == 503, refused.content  # failing over: refused although failing open
        assert refused.json()["error"]["code"] == "limits_unavailable"

        wait_for(lambda: _ok(lambda: sentinel_group.master_port() == sentinel_group.replica), timeout=20)
        started = time.monotonic()
        wait_for(lambda: chat(personas.alice_key, HELLO).status_code == 200, timeout=10, interval=0.2)
        print(f"served again {time.monotonic() - started:.2f}s after the sentinel named the new master")
    counters.outage.answered()
    # Every served request charged once, on the new master as in the database copy: the one before
    # the failover (replicated) and the one after.
    used = int(_client(sentinel_group.replica).hget(hash_key, "used"))
    assert used == BudgetUsage.objects.get(budget=budget).used == 2 * tokens
