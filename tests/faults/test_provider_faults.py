"""Providers that hang, reset connections or cut streams, and clients that leave mid-stream
(issue 8, faults 4 and 6; docs/reliability.md). The real server, 2 workers, the sandbox provider."""
from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
import redis
from django.db import connection
from django.utils import timezone

from audit.models import AuditEvent
from budgets.models import Budget, BudgetUsage
from tests.faults.conftest import running_gateway, wait_for
from tests.faults.seed import PREFIX, seed, unseed
from tests.servers import database_url_for, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

HELLO = [{"role": "user", "content": "Say hello"}]


class ResettingServer:
    """Accepts connections and resets them at once (SO_LINGER 0), as a crashing upstream does."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self.sock.close()


def established_to(port: int) -> int:
    """TCP connections on this machine, in state ESTABLISHED, whose remote end is `port` (the gateway's)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


@pytest.fixture(scope="module")
def gateway(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    from proxy.models import Deployment, ModelRoute, Provider

    sandbox_port = free_port()
    resetting = ResettingServer()
    with django_db_blocker.unblock():
        seeded = seed(sandbox_port)
        reset = Provider.objects.create(name=f"{PREFIX}reset", kind="openai",
                                        base_url=f"http://127.0.0.1:{resetting.port}/v1",
                                        api_key_env="TOLLGATE_PROVIDER_FAULTS_UPSTREAM_KEY")
        hang = Provider.objects.get(name=f"{PREFIX}hang")
        openai = Provider.objects.get(name=f"{PREFIX}openai")
        for model, deployments in {"reset": [(reset, 0), (openai, 1)], "hang-only": [(hang, 0)]}.items():
            route = ModelRoute.objects.create(model=f"{PREFIX}{model}")
            for provider, priority in deployments:
                Deployment.objects.create(route=route, provider=provider, upstream_model="up", priority=priority)
        database_url = database_url_for(connection.settings_dict)
    try:
        # The breaker stays closed, so every request meets the fault (failover is what is tested).
        with running_gateway(sandbox_port=sandbox_port, database_url=database_url,
                             redis_url=os.environ.get("REDIS_URL"), TOLLGATE_BREAKER_FAILURES="1000") as running:
            running.key = seeded.key
            running.http = httpx.Client(base_url=running.url, timeout=20,
                                        headers={"authorization": f"Bearer {seeded.key}"})
            yield running
            running.http.close()
    finally:
        resetting.close()
        with django_db_blocker.unblock():
            unseed()


@pytest.fixture
def sandbox(gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.sandbox_url, timeout=10) as client:
        client.post("/_sandbox/reset")
        yield client
        client.post("/_sandbox/reset")


def chat(gateway, model: str, *, stream: bool = False) -> httpx.Response:
    return gateway.http.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "stream": stream})


def test_a_hanging_provider_times_out_and_fails_over(gateway):
    started = time.monotonic()
    response = chat(gateway, f"{PREFIX}hang")
    assert response.status_code == 200, response.text
    assert response.headers["x-tollgate-attempts"] == "2"
    assert time.monotonic() - started < 3.0  # its timeout is 0.5 s


def test_a_hanging_provider_without_fallback_is_a_timely_504_in_the_callers_shape(gateway):
    started = time.monotonic()
    response = chat(gateway, f"{PREFIX}hang-only")
    assert time.monotonic() - started < 3.0
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    claude = gateway.http.post("/v1/messages", json={"model": f"{PREFIX}hang-only", "max_tokens": 10,
                                                     "messages": HELLO})
    assert claude.status_code == 504
    assert claude.json()["type"] == "error" and claude.json()["error"]["type"] == "api_error"


def test_a_provider_that_resets_connections_fails_over(gateway):
    response = chat(gateway, f"{PREFIX}reset")
    assert response.status_code == 200, response.text
    assert response.headers["x-tollgate-attempts"] == "2"


def test_a_stream_cut_midway_ends_with_an_error_event_and_is_audited(gateway, sandbox):
    sandbox.post("/_sandbox/config", json={"disconnect_after": 3})
    response = chat(gateway, f"{PREFIX}demo", stream=True)
    assert response.status_code == 200
    events = [e for e in response.text.split("\n\n") if e.strip()]
    assert "stream_interrupted" in events[-1] and "[DONE]" not in response.text
    event = AuditEvent.objects.get(request_id=response.headers["x-request-id"])
    assert event.error_class == "stream_interrupted"
    with gateway.http.stream("POST", "/v1/messages", json={"model": f"{PREFIX}claude", "max_tokens": 50,
                                                           "messages": HELLO, "stream": True}) as claude:
        text = claude.read().decode()
    assert text.rstrip().split("\n\n")[-1].startswith("event: error") and "message_stop" not in text


def test_a_client_that_leaves_mid_stream_cancels_the_upstream_and_is_settled_and_audited(gateway, sandbox):
    sandbox.post("/_sandbox/config", json={"chunk_delay_ms": 200, "chunks": 30})
    body = {"model": f"{PREFIX}claude", "max_tokens": 50, "messages": HELLO, "stream": True}
    with gateway.http.stream("POST", "/v1/messages", json=body) as response:
        request_id = response.headers["x-request-id"]
        for chunk in response.iter_bytes():
            if b"content_block_delta" in chunk:
                break  # some text arrived; leave
    # The sandbox saw its stream's client go away long before its 6 s were up.
    wait_for(lambda: sandbox.get("/_sandbox/stats").json()["client_disconnects"] == 1, timeout=5)
    event = wait_for_event(request_id)
    assert event.error_class == "client_disconnected"
    assert event.prompt_tokens > 0  # what the provider reported before the client left
    # Settled: the request's hold on the budget is released, its usage charged.
    budget = Budget.objects.get(consumer__name=f"{PREFIX}consumer-0")
    day = timezone.now().date()
    if os.environ.get("REDIS_URL"):
        live = redis.Redis.from_url(os.environ["REDIS_URL"])
        window = live.hgetall(f"{gateway.env['TOLLGATE_CACHE_PREFIX']}:budget:{{c{budget.consumer_id}}}:"
                              f"{budget.pk}:{day.isoformat()}")
        live.close()
        assert int(window[b"reserved"]) == 0
        assert not any(name.startswith(b"r:") for name in window)
    else:
        assert BudgetUsage.objects.get(budget=budget, period_start=day).reserved == 0


def wait_for_event(request_id: str) -> AuditEvent:
    found: list[AuditEvent] = []

    def stored() -> bool:
        found[:] = AuditEvent.objects.filter(request_id=request_id)
        return bool(found)

    wait_for(stored, timeout=5)
    return found[0]


def test_faults_leak_no_upstream_connections_and_leave_no_worker_stuck(gateway, sandbox):
    for _ in range(6):
        assert chat(gateway, f"{PREFIX}demo").status_code == 200
    time.sleep(0.5)
    before = established_to(gateway.sandbox_port)
    for _ in range(3):
        chat(gateway, f"{PREFIX}hang")
        chat(gateway, f"{PREFIX}reset")
    sandbox.post("/_sandbox/config", json={"disconnect_after": 2})
    for _ in range(3):
        chat(gateway, f"{PREFIX}demo", stream=True)
    sandbox.post("/_sandbox/config", json={"disconnect_after": None, "chunk_delay_ms": 100, "chunks": 30})
    for _ in range(3):
        with gateway.http.stream("POST", "/v1/chat/completions",
                                 json={"model": f"{PREFIX}demo", "messages": HELLO, "stream": True}) as response:
            next(response.iter_bytes())
    sandbox.post("/_sandbox/reset")
    # No worker is stuck: quick answers again, from both workers.
    for _ in range(10):
        started = time.monotonic()
        assert chat(gateway, f"{PREFIX}demo").status_code == 200
        assert time.monotonic() - started < 1.0
    time.sleep(0.5)
    after = established_to(gateway.sandbox_port)
    print(f"connections to the sandbox: {before} before the faults, {after} after")
    # The pool keeps a few idle connections per worker; the faulty requests add none.
    assert after <= max(before, 2) + 2
