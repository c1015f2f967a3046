"""Keys bound to client networks and User-Agents, against the real server (gunicorn) and the sandbox,
with the official SDKs (issue #17; docs/admin.md#key-binding).

The gateway trusts 127.0.0.1 as a reverse proxy, so a request without X-Forwarded-For is judged
by its own address (127.0.0.1) and one with it by the forwarded client.
"""
from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import anthropic
import httpx
import openai
import pytest

from audit.models import AuditEvent
from tests.servers import (
    free_port,
    gateway_command,
    sandbox_command,
    server_env,
    subprocess_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

UPSTREAM_KEY = "sk-binding-upstream-credential"
MESSAGES = [{"role": "user", "content": "Say hello"}]


def _seed(sandbox_port: int) -> SimpleNamespace:
    from budgets.keys import key_issue
    from budgets.models import Consumer
    from proxy.models import Deployment, ModelRoute, Provider

    sandbox = Provider.objects.create(name="binding-sandbox", kind="sandbox",
                                      base_url=f"http://127.0.0.1:{sandbox_port}/v1",
                                      api_key_env="TOLLGATE_PROVIDER_BINDING_UPSTREAM_KEY")
    route = ModelRoute.objects.create(model="bound-demo")
    Deployment.objects.create(route=route, provider=sandbox, upstream_model="upstream-demo")
    consumer = Consumer.objects.create(name="binding-consumer")

    def issue(name: str, **binding: list[str]) -> str:
        return key_issue(consumer=consumer, name=name, **binding).plaintext

    return SimpleNamespace(
        ten=issue("ten", allowed_networks=["10.0.0.0/8"]),
        loopback=issue("loopback", allowed_networks=["127.0.0.0/8", "::1/128"]),
        claude=issue("claude", allowed_user_agents=["claude-cli/"]),
    )


def _unseed() -> None:
    from budgets.models import Consumer
    from proxy.models import ModelRoute, Provider

    ModelRoute.objects.filter(model="bound-demo").delete()
    Provider.objects.filter(name="binding-sandbox").delete()
    Consumer.objects.filter(name="binding-consumer").delete()


@pytest.fixture(scope="module")
def gateway(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    """The servers on the module's own database (server_database): their committed rows go with it."""
    sandbox_port, gateway_port = free_port(), free_port()
    with django_db_blocker.unblock():
        keys = _seed(sandbox_port)
    env = server_env(DATABASE_URL=server_database, TOLLGATE_PROVIDER_BINDING_UPSTREAM_KEY=UPSTREAM_KEY,
                     TOLLGATE_TRUSTED_PROXIES="127.0.0.1/32")
    try:
        with subprocess_server(sandbox_command(sandbox_port, "--require-key", UPSTREAM_KEY),
                               health_url=f"http://127.0.0.1:{sandbox_port}/_sandbox/health",
                               env=env, log_name="sandbox"), \
             subprocess_server(gateway_command(gateway_port, workers=1),
                               health_url=f"http://127.0.0.1:{gateway_port}/healthz",
                               env=env, log_name="gateway"):
            yield SimpleNamespace(url=f"http://127.0.0.1:{gateway_port}", keys=keys)
    finally:
        with django_db_blocker.unblock():
            _unseed()


def openai_client(gateway, key: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=20,
                         default_headers=headers or None)


def anthropic_client(gateway, key: str, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0, timeout=20,
                               default_headers=headers or None)


def chat(gateway, key: str, **headers: str):
    return openai_client(gateway, key, **headers).chat.completions.with_raw_response.create(
        model="bound-demo", messages=MESSAGES)


def test_a_key_bound_to_another_network_is_refused_in_the_openai_shape(gateway):
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(gateway, gateway.keys.ten)
    error = info.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "permission_denied")
    assert "may not be used from 127.0.0.1" in error["message"]
    request_id = info.value.response.headers["x-request-id"]
    event = AuditEvent.objects.get(request_id=request_id)
    assert (event.status, event.error_class, event.client_ip) == (403, "permission_denied", "127.0.0.1")


def test_a_key_bound_to_another_network_is_refused_in_the_anthropic_shape(gateway):
    client = anthropic_client(gateway, gateway.keys.ten)
    with pytest.raises(anthropic.PermissionDeniedError) as info:
        client.messages.create(model="bound-demo", max_tokens=20, messages=MESSAGES)
    body = info.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "permission_error"
    event = AuditEvent.objects.get(request_id=info.value.response.headers["x-request-id"])
    assert (event.status, event.endpoint) == (403, "messages")


def test_every_proxy_path_applies_the_binding(gateway):
    headers = {"authorization": f"Bearer {gateway.keys.ten}"}
    assert httpx.get(f"{gateway.url}/v1/models", headers=headers).status_code == 403
    assert httpx.get(f"{gateway.url}/v1/models/bound-demo", headers=headers).status_code == 403
    counted = httpx.post(f"{gateway.url}/v1/messages/count_tokens", headers=headers,
                         json={"model": "bound-demo", "messages": MESSAGES})
    assert counted.status_code == 403 and counted.json()["error"]["type"] == "permission_error"


def test_a_key_bound_to_loopback_works(gateway):
    raw = chat(gateway, gateway.keys.loopback)
    assert raw.parse().choices[0].message.content
    reply = anthropic_client(gateway, gateway.keys.loopback).messages.create(
        model="bound-demo", max_tokens=20, messages=MESSAGES)
    assert reply.content[0].text


def test_behind_a_trusted_proxy_the_forwarded_address_is_judged(gateway):
    assert chat(gateway, gateway.keys.ten, **{"X-Forwarded-For": "10.1.2.3"}).parse().choices
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(gateway, gateway.keys.loopback, **{"X-Forwarded-For": "10.1.2.3"})
    assert "may not be used from 10.1.2.3" in info.value.response.json()["error"]["message"]
    event = AuditEvent.objects.get(request_id=info.value.response.headers["x-request-id"])
    assert event.client_ip == "10.1.2.3"


def test_a_key_bound_to_a_client_refuses_another(gateway):
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(gateway, gateway.keys.claude)  # the openai SDK's own User-Agent
    assert "User-Agent" in info.value.response.json()["error"]["message"]
    assert chat(gateway, gateway.keys.claude, **{"User-Agent": "claude-cli/2.0.14 (external, cli)"}).parse().choices
