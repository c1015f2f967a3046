"""Rows the fault tests (and the soak script) need: a sandbox provider, routes, consumers with budgets.

Importable (inside a test that may write the test database) or runnable against any
database: `DATABASE_URL=... python -m tests.faults.seed <sandbox port> [consumers] [flaky port]`
prints the keys as JSON.
"""
from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

UPSTREAM_KEY = "sk-faults-upstream-credential"
PREFIX = "faults-"


def seed(sandbox_port: int, *, consumers: int = 1, budget_tokens: int = 1_000_000_000,
         flaky_port: int | None = None) -> SimpleNamespace:
    """Routes `demo` (sandbox, OpenAI format), `claude` (sandbox, Anthropic format), and `hang`
    (a provider that never answers in time, failing over to the sandbox); each consumer has a
    daily token budget, so every request goes through the shared counters."""
    from budgets.keys import key_issue
    from budgets.models import Budget, Consumer
    from proxy.models import Deployment, ModelRoute, Provider

    base = f"http://127.0.0.1:{sandbox_port}"
    openai = Provider.objects.create(name=f"{PREFIX}openai", kind="openai", base_url=f"{base}/v1",
                                     api_key_env="TOLLGATE_PROVIDER_FAULTS_UPSTREAM_KEY")
    anthropic = Provider.objects.create(name=f"{PREFIX}anthropic", kind="anthropic", base_url=base,
                                        api_key_env="TOLLGATE_PROVIDER_FAULTS_UPSTREAM_KEY")
    hang = Provider.objects.create(name=f"{PREFIX}hang", kind="openai", base_url=f"{base}/v1",
                                   api_key_env="TOLLGATE_PROVIDER_FAULTS_UPSTREAM_KEY", timeout_seconds=0.5,
                                   extra_headers={"x-sandbox-hang-ms": "30000"})
    routes = {"demo": [(openai, 0)], "claude": [(anthropic, 0)], "hang": [(hang, 0), (openai, 1)]}
    if flaky_port:
        # A provider of its own (a second sandbox), whose failures the soak turns on with the
        # sandbox's runtime fail_count knob; the route fails over to the healthy one.
        flaky = Provider.objects.create(name=f"{PREFIX}flaky", kind="openai",
                                        base_url=f"http://127.0.0.1:{flaky_port}/v1",
                                        api_key_env="TOLLGATE_PROVIDER_FAULTS_UPSTREAM_KEY")
        routes["flaky"] = [(flaky, 0), (openai, 1)]
    for model, deployments in routes.items():
        route = ModelRoute.objects.create(model=f"{PREFIX}{model}", default_max_tokens=256)
        for provider, priority in deployments:
            Deployment.objects.create(route=route, provider=provider, upstream_model=f"up-{model}",
                                      priority=priority)
    keys = []
    for n in range(consumers):
        consumer = Consumer.objects.create(name=f"{PREFIX}consumer-{n}")
        Budget.objects.create(consumer=consumer, metric="tokens", limit=budget_tokens, period="day")
        keys.append(key_issue(consumer=consumer, name="faults").plaintext)
    return SimpleNamespace(key=keys[0], keys=keys, upstream_key=UPSTREAM_KEY)


def unseed() -> None:
    from budgets.models import Consumer
    from proxy.models import ModelRoute, Provider

    ModelRoute.objects.filter(model__startswith=PREFIX).delete()
    Provider.objects.filter(name__startswith=PREFIX).delete()
    Consumer.objects.filter(name__startswith=PREFIX).delete()


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")
    import django

    django.setup()
    port = int(sys.argv[1])
    consumers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    flaky = int(sys.argv[3]) if len(sys.argv) > 3 else None
    seeded = seed(port, consumers=consumers, flaky_port=flaky)
    print(json.dumps({"keys": seeded.keys}))


if __name__ == "__main__":
    main()
