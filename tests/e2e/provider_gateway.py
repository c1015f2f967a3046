"""The real server with providers of every kind (and some broken on purpose), all served by the sandbox."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

from django.db import connection

from tests.servers import (
    database_url_for,
    free_port,
    gateway_command,
    sandbox_command,
    server_env,
    subprocess_server,
)

UPSTREAM_KEY = "sk-e2e-upstream-credential"
ROUTES = ["claude", "gpt", "gem", "split", "cut", "cut-claude", "fail-429", "fail-500", "fail-503", "fail-529",
          "fail-timeout", "fail-down"]


def _seed(port: int) -> SimpleNamespace:
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


def _unseed() -> None:
    from budgets.models import Consumer
    from proxy.models import ModelRoute, Provider

    ModelRoute.objects.filter(model__in=ROUTES).delete()
    Provider.objects.filter(name__startswith="e2e-").delete()
    Consumer.objects.filter(name="e2e-providers").delete()


@contextmanager
def provider_gateway(django_db_blocker) -> Iterator[SimpleNamespace]:
    sandbox_port, gateway_port = free_port(), free_port()
    with django_db_blocker.unblock():
        seeded = _seed(sandbox_port)
        database_url = database_url_for(connection.settings_dict)
    env = server_env(DATABASE_URL=database_url, TOLLGATE_PROVIDER_E2E_UPSTREAM_KEY=UPSTREAM_KEY,
                     # Failover is what these tests watch: keep the breaker from hiding it.
                     TOLLGATE_BREAKER_FAILURES="1000")
    try:
        with subprocess_server(sandbox_command(sandbox_port, "--require-key", UPSTREAM_KEY),
                               health_url=f"http://127.0.0.1:{sandbox_port}/_sandbox/health",
                               env=env, log_name="sandbox"), \
             subprocess_server(gateway_command(gateway_port),
                               health_url=f"http://127.0.0.1:{gateway_port}/healthz",
                               env=env, log_name="gateway"):
            yield SimpleNamespace(url=f"http://127.0.0.1:{gateway_port}",
                                  sandbox_url=f"http://127.0.0.1:{sandbox_port}", key=seeded.key)
    finally:
        with django_db_blocker.unblock():
            _unseed()
