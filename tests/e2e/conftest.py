from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
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


def _seed(sandbox_port: int) -> SimpleNamespace:
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


def _unseed() -> None:
    from budgets.models import Consumer
    from proxy.models import ModelRoute, Provider

    ModelRoute.objects.filter(model__in=["demo", "slow", "down"]).delete()
    Provider.objects.filter(name__startswith="e2e-").delete()
    Consumer.objects.filter(name="e2e-consumer").delete()


@pytest.fixture(scope="module")
def gateway(django_db_setup, django_db_blocker) -> Iterator[SimpleNamespace]:
    """The production server (gunicorn, 2 uvicorn workers) and a sandbox provider, on free ports."""
    sandbox_port, gateway_port = free_port(), free_port()
    with django_db_blocker.unblock():
        seeded = _seed(sandbox_port)
        database_url = database_url_for(connection.settings_dict)
    env = server_env(DATABASE_URL=database_url, TOLLGATE_PROVIDER_E2E_UPSTREAM_KEY=UPSTREAM_KEY)
    try:
        with subprocess_server(sandbox_command(sandbox_port, "--require-key", UPSTREAM_KEY),
                               health_url=f"http://127.0.0.1:{sandbox_port}/_sandbox/health",
                               env=env, log_name="sandbox"), \
             subprocess_server(gateway_command(gateway_port),
                               health_url=f"http://127.0.0.1:{gateway_port}/healthz",
                               env=env, log_name="gateway") as process:
            yield SimpleNamespace(
                url=f"http://127.0.0.1:{gateway_port}",
                sandbox_url=f"http://127.0.0.1:{sandbox_port}",
                key=seeded.key,
                revoked_key=seeded.revoked_key,
                process=process,
            )
    finally:
        with django_db_blocker.unblock():
            _unseed()
