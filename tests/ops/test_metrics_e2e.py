"""A known mix of requests through the production start with TWO workers: /metrics adds up, logs are JSON.

One run (module fixture): the sandbox provider and the gateway as the Procfile starts
it, then concurrent requests on fresh connections (so both workers serve some),
then scrapes, then the server is stopped so its whole log can be read.
"""
from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import orjson
import pytest
from django.conf import settings
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import (
    database_url_for,
    free_port,
    sandbox_and_gateway,
    server_env,
    wait_until_up,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

UPSTREAM_KEY = "sk-ops-upstream-credential-0123456789"
METRICS_TOKEN = "ops-metrics-token-0123456789"
TOKEN_BUDGET = 1_000_000
# Heartbeats are shared through Redis; without it each worker sees only itself.
WORKERS_SEEN = 2 if settings.REDIS_URL else 1


def _seed(sandbox_port: int) -> SimpleNamespace:
    from budgets.keys import key_issue
    from budgets.models import Budget, Consumer
    from proxy.models import Deployment, ModelRoute, Provider

    sandbox = Provider.objects.create(name="ops-sandbox", kind="sandbox", base_url=f"http://127.0.0.1:{sandbox_port}/v1",
                                      api_key_env="TOLLGATE_PROVIDER_OPS_UPSTREAM_KEY")
    down = Provider.objects.create(name="ops-down", kind="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
                                   api_key_env="TOLLGATE_PROVIDER_OPS_UPSTREAM_KEY")
    demo = ModelRoute.objects.create(model="ops-demo")
    Deployment.objects.create(route=demo, provider=sandbox, upstream_model="sandbox-model")
    broken = ModelRoute.objects.create(model="ops-down")
    Deployment.objects.create(route=broken, provider=down, upstream_model="gone")
    failover = ModelRoute.objects.create(model="ops-failover")
    Deployment.objects.create(route=failover, provider=down, upstream_model="gone", priority=0)
    Deployment.objects.create(route=failover, provider=sandbox, upstream_model="sandbox-model", priority=1)
    alpha = Consumer.objects.create(name="ops-alpha")
    beta = Consumer.objects.create(name="ops-beta")
    Budget.objects.create(consumer=alpha, metric="tokens", limit=TOKEN_BUDGET, period="day")
    # A requests budget, not a RateLimit: without Redis each worker counts rate limits in its own
    # memory, while budgets count in the database, so the refusal is the same on both setups.
    Budget.objects.create(consumer=beta, metric="requests", limit=2, period="day")
    return SimpleNamespace(alpha_key=key_issue(consumer=alpha, name="ops").plaintext,
                           beta_key=key_issue(consumer=beta, name="ops").plaintext)


def _unseed() -> None:
    from budgets.models import Consumer
    from proxy.models import ModelRoute, Provider

    ModelRoute.objects.filter(model__startswith="ops-").delete()
    Provider.objects.filter(name__startswith="ops-").delete()
    Consumer.objects.filter(name__startswith="ops-").delete()


def _chat(url: str, key: str, model: str, *, stream: bool = False) -> dict:
    body: dict = {"model": model, "messages": [{"role": "user", "content": "Say hello to the operators."}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    # A fresh connection each time, so the kernel spreads requests over both workers.
    response = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                          timeout=30)
    usage = None
    if response.status_code == 200 and stream:
        for line in response.text.splitlines():
            if line.startswith("data: {") and '"usage"' in line:
                usage = orjson.loads(line[6:]).get("usage") or usage
    elif response.status_code == 200:
        usage = response.json()["usage"]
    return {"status": response.status_code, "usage": usage, "model": model, "key": key, "stream": stream}


def _families(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def total(families: dict, sample: str, **labels: str) -> float:
    family = sample.removesuffix("_total").removesuffix("_count").removesuffix("_bucket").removesuffix("_sum")
    return sum(s.value for s in families.get(family, []) if s.name == sample
               and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture(scope="module")
def run(server_database, django_db_blocker, tmp_path_factory) -> Iterator[SimpleNamespace]:
    sandbox_port = free_port()
    metrics_dir = tmp_path_factory.mktemp("metrics")
    with django_db_blocker.unblock():
        seeded = _seed(sandbox_port)
        database_url = database_url_for(connection.settings_dict)
    env = server_env(DATABASE_URL=database_url, TOLLGATE_PROVIDER_OPS_UPSTREAM_KEY=UPSTREAM_KEY,
                     PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), TOLLGATE_METRICS_TOKEN=METRICS_TOKEN,
                     TOLLGATE_HEARTBEAT_SECONDS="1",
                     TOLLGATE_LOG_FORMAT="json", TOLLGATE_LOG_LEVEL="info")
    env.pop("DJANGO_DEBUG", None)
    bad_key = "tg-" + secrets.token_urlsafe(24)
    a, b = seeded.alpha_key, seeded.beta_key
    mix = ([(a, "ops-demo", False)] * 6 + [(a, "ops-demo", True)] * 4 + [(b, "ops-demo", False)] * 3
           + [(bad_key, "ops-demo", False)] * 2 + [(a, "ops-down", False)] * 2 + [(a, "ops-failover", False)] * 3
           + [(a, "gpt-raw-client-model-xyz", False)])
    try:
        with sandbox_and_gateway(env=env, sandbox_port=sandbox_port, upstream_key=UPSTREAM_KEY,
                                 log_name="ops-") as running:
            url, process = running.url, running.process
            wait_until_up(f"{url}/readyz")
            with ThreadPoolExecutor(max_workers=8) as pool:
                results = list(pool.map(lambda m: _chat(url, m[0], m[1], stream=m[2]), mix))
            auth = {"Authorization": f"Bearer {METRICS_TOKEN}"}
            # Wait for both workers' heartbeats (every second) before reading the state gauges.
            for _ in range(50):
                text = httpx.get(f"{url}/metrics", headers=auth, timeout=10).text
                if total(_families(text), "tollgate_workers_up") >= WORKERS_SEEN:
                    break
                httpx.get(f"{url}/healthz")
            scrapes = [httpx.get(f"{url}/metrics", headers=auth, timeout=10) for _ in range(4)]
            refused = {
                "no_token": httpx.get(f"{url}/metrics", timeout=10).status_code,
                "through_proxy": httpx.get(f"{url}/metrics", headers={**auth, "X-Forwarded-For": "203.0.113.7"},
                                           timeout=10).status_code,
            }
            counter_pids = {name.split("_")[-1] for name in os.listdir(metrics_dir) if name.startswith("counter_")}
        yield SimpleNamespace(results=results, scrapes=scrapes, refused=refused, counter_pids=counter_pids,
                              log_path=Path(process.log_path), secrets=[a, b, bad_key, UPSTREAM_KEY, METRICS_TOKEN])
    finally:
        with django_db_blocker.unblock():
            _unseed()


def test_the_mix_went_as_planned(run):
    statuses = Counter(r["status"] for r in run.results)
    assert statuses == {200: 15, 429: 1, 401: 2, 502: 2, 404: 1}
    # Both workers served requests: each left its own counter file.
    assert len(run.counter_pids) >= 2, run.counter_pids


def test_every_scrape_from_any_worker_adds_up_to_the_mix(run):
    texts = [s.text for s in run.scrapes]
    assert all(s.status_code == 200 for s in run.scrapes)
    for text in texts:
        f = _families(text)
        assert total(f, "tollgate_requests_total") == 21
        assert total(f, "tollgate_requests_total", status_class="2xx") == 15
        assert total(f, "tollgate_requests_total", status_class="4xx") == 4
        assert total(f, "tollgate_requests_total", status_class="5xx") == 2
        assert total(f, "tollgate_requests_total", consumer="ops-alpha") == 16
        assert total(f, "tollgate_requests_total", consumer="ops-beta") == 3
        assert total(f, "tollgate_requests_total", consumer="-") == 2
        assert total(f, "tollgate_requests_total", route="ops-demo", provider="ops-sandbox", status_class="2xx") == 12
        assert total(f, "tollgate_requests_total", route="ops-failover", provider="ops-sandbox") == 3
        assert total(f, "tollgate_request_errors_total", error_class="connect_error", route="ops-down") == 2
        assert total(f, "tollgate_request_errors_total", error_class="invalid_api_key") == 2
        assert total(f, "tollgate_rate_limit_refusals_total", consumer="ops-beta",
                     reason="budget_exceeded") == 1
        assert total(f, "tollgate_failovers_total", route="ops-failover") == 3
        assert total(f, "tollgate_retries_total", route="ops-failover") == 3
        assert total(f, "tollgate_upstream_latency_seconds_count") == 17
        assert total(f, "tollgate_time_to_first_token_seconds_count", route="ops-demo") == 4
        assert total(f, "tollgate_gateway_overhead_seconds_count") == 21
        assert total(f, "tollgate_audit_write_seconds_count") == 21
        assert total(f, "tollgate_open_streams") == 0


def test_tokens_and_budget_remaining_match_what_the_clients_were_told(run):
    f = _families(run.scrapes[-1].text)
    ok = [r for r in run.results if r["status"] == 200]
    prompt = sum(r["usage"]["prompt_tokens"] for r in ok)
    completion = sum(r["usage"]["completion_tokens"] for r in ok)
    assert prompt > 0 and completion > 0
    assert total(f, "tollgate_tokens_total", kind="prompt") == prompt
    assert total(f, "tollgate_tokens_total", kind="completion") == completion
    alpha = [r for r in ok if r["key"] == run.secrets[0]]
    alpha_tokens = sum(r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] for r in alpha)
    assert total(f, "tollgate_budget_remaining", consumer="ops-alpha", metric="tokens") == TOKEN_BUDGET - alpha_tokens


def test_state_gauges_are_read_at_scrape_time(run):
    f = _families(run.scrapes[-1].text)
    assert total(f, "tollgate_workers_up") == WORKERS_SEEN
    assert total(f, "tollgate_dependency_up", dependency="database") == 1
    breakers = {s.labels["deployment"]: s.value for s in f["tollgate_circuit_breaker_state"]
                if s.labels["route"].startswith("ops-")}
    assert breakers["ops-sandbox/sandbox-model"] == 0
    assert "ops-down/gone" in breakers
    assert all(s.value == 1 for s in f["tollgate_state_up"])


def test_labels_never_carry_what_clients_sent(run):
    text = run.scrapes[-1].text
    assert "gpt-raw-client-model-xyz" not in text
    assert "req_" not in text
    assert total(_families(text), "tollgate_requests_total", route="-", consumer="ops-alpha") == 1


def test_metrics_refuse_without_token_and_through_an_untrusted_proxy(run):
    assert run.refused == {"no_token": 401, "through_proxy": 403}


def test_every_log_line_is_json_and_carries_no_secret(run):
    lines = [line for line in run.log_path.read_text().splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # raises on any line that is not JSON
    assert {r["logger"] for r in records} >= {"gunicorn.error", "uvicorn.error", "tollgate.requests"}
    for line in lines:
        for secret in run.secrets:
            assert secret not in line
    finished = [r for r in records if r["message"] == "request finished"]
    assert len(finished) == 21
    ok = next(r for r in finished if r.get("consumer") == "ops-alpha" and r["status"] == 200)
    assert {"time", "level", "request_id", "consumer", "route", "provider", "status", "latency_ms"} <= ok.keys()
