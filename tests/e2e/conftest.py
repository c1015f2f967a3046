"""The real server (gunicorn, 2 uvicorn workers) and a sandbox provider, on free ports and on the
module's own database, with one of two seeds: `gateway` (a sandbox route, a slow one, one down;
a key and a revoked key) and `provider_gateway` (providers of every kind, some broken on purpose)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import pytest

from tests.servers import free_port, sandbox_and_gateway, server_env

UPSTREAM_KEY = "sk-e2e-upstream-credential"


def seed_demo(sandbox_port: int) -> SimpleNamespace:
    from budgets.keys import key_issue, key_revoke
    from budgets.models import Consumer
    from proxy.models import Deployment, ModelRoute, Provider

    sandbox = Provider.objects.create(name="e2e-sandbox", kind="sandbox",
                                      base_url=f"http://127.0.0.1:{sandbox_port}/v1",
                                      api_key_env="TOLLGATE_PROVIDER_E2E_UPSTREAM_KEY")
    slow = Provider.objects.create(name="e2e-slow", kind="openai_compatible",
                                   base_url=f"http://127.0.0.1:{sandbox_port}/v1",
                                   api_key_env="TOLLGATE_PROVIDER_E2E_UPSTREAM_KEY",
                                   extra_headers={"x-sandbox-chunk-delay-ms": "150", "x-sandbox-chunks": "6"})
    down = Provider.objects.create(name="e2e-down", kind="openai",
                                   base_url=f"http://127.0.0.1:{free_port()}/v1",
                                   api_key_env="TOLLGATE_PROVIDER_E2E_UPSTREAM_KEY")
    for model, provider in (("demo", sandbox), ("slow", slow), ("down", down)):
        route = ModelRoute.objects.create(model=model)
        Deployment.objects.create(route=route, provider=provider, upstream_model=f"upstream-{model}")
    consumer = Consumer.objects.create(name="e2e-consumer")
    key = key_issue(consumer=consumer, name="e2e").plaintext
    revoked = key_issue(consumer=consumer, name="revoked")
    key_revoke(key=revoked.key)
    return SimpleNamespace(key=key, revoked_key=revoked.plaintext)


def seed_providers(port: int) -> SimpleNamespace:
    from budgets.keys import key_issue
    from budgets.models import Consumer
    from proxy.models import Deployment, ModelRoute, Provider

    sandbox = f"http://127.0.0.1:{port}"

    def provider(name: str, kind: str, **fields) -> Provider:
        base = {"anthropic": sandbox, "openai": f"{sandbox}/v1", "gemini": f"{sandbox}/v1beta"}[kind]
        return Provider.objects.create(name=f"e2e-{name}", kind=kind, base_url=fields.pop("base_url", base),
                                       api_key_env="TOLLGATE_PROVIDER_E2E_UPSTREAM_KEY", **fields)

    anthropic = provider("anthropic", "anthropic")
    openai = provider("openai", "openai")
    gemini = provider("gemini", "gemini")
    broken = {
        "429": provider("f429", "anthropic", extra_headers={"x-sandbox-fail-status": "429"}),
        "500": provider("f500", "gemini", extra_headers={"x-sandbox-fail-status": "500"}),
        "503": provider("f503", "openai", extra_headers={"x-sandbox-fail-status": "503"}),
        "529": provider("f529", "anthropic", extra_headers={"x-sandbox-fail-status": "529"}),
        "timeout": provider("fhang", "anthropic", timeout_seconds=0.5, extra_headers={"x-sandbox-hang-ms": "5000"}),
        "down": provider("fdown", "gemini", base_url=f"http://127.0.0.1:{free_port()}/v1beta"),
    }
    cutting = provider("cutting", "gemini", extra_headers={"x-sandbox-disconnect-after": "3",
                                                            "x-sandbox-chunk-delay-ms": "20"})
    cutting_claude = provider("cutting-claude", "anthropic", extra_headers={"x-sandbox-disconnect-after": "4"})

    def route(model: str, *deployments: tuple[Provider, int, int]) -> None:
        created = ModelRoute.objects.create(model=model, default_max_tokens=256)
        for p, weight, priority in deployments:
            Deployment.objects.create(route=created, provider=p, upstream_model=f"up-{model}-{p.kind}",
                                      weight=weight, priority=priority)

    route("claude", (anthropic, 1, 0))
    route("gpt", (openai, 1, 0))
    route("gem", (gemini, 1, 0))
    # The seed scenario: Anthropic preferred (weight 10), OpenAI second (weight 5).
    route("split", (anthropic, 10, 0), (openai, 5, 0))
    route("cut", (cutting, 1, 0), (openai, 1, 1))
    route("cut-claude", (cutting_claude, 1, 0), (openai, 1, 1))
    for cause, p in broken.items():
        route(f"fail-{cause}", (p, 1, 0), (openai, 1, 1))
    consumer = Consumer.objects.create(name="e2e-providers")
    return SimpleNamespace(key=key_issue(consumer=consumer, name="e2e").plaintext)


@contextmanager
def seeded_gateway(database_url: str, django_db_blocker, seed: Callable[[int], SimpleNamespace],
                   **env: str) -> Iterator[SimpleNamespace]:
    """`seed` written to the module's database (server_database), then the servers started on it:
    the database goes with the module, so nothing is unseeded."""
    sandbox_port = free_port()
    with django_db_blocker.unblock():
        seeded = seed(sandbox_port)
    env = server_env(DATABASE_URL=database_url, TOLLGATE_PROVIDER_E2E_UPSTREAM_KEY=UPSTREAM_KEY, **env)
    with sandbox_and_gateway(env=env,
                             sandbox_port=sandbox_port, upstream_key=UPSTREAM_KEY) as running:
        yield SimpleNamespace(**vars(running), **vars(seeded))


@pytest.fixture(scope="module")
def gateway(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    with seeded_gateway(server_database, django_db_blocker, seed_demo) as running:
        yield running


@pytest.fixture(scope="module")
def provider_gateway(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    # Failover is what these tests watch: keep the breaker from hiding it.
    with seeded_gateway(server_database, django_db_blocker, seed_providers,
                        TOLLGATE_BREAKER_FAILURES="1000") as running:
        yield running
