"""Header smuggling (issue 8; docs/reliability.md): a client cannot set the upstream credential, the
`Host` or any header outside the adapter's allow-list; hop-by-hop headers stop at the gateway."""
from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from proxy.models import Deployment, ModelRoute, Provider
from tests.proxy.client import call

pytestmark = pytest.mark.django_db

SMUGGLED = "smuggled-7f3a"
# The test client already sends `Host: testserver`, a name that is not the sandbox's: the upstream
# `Host` is checked to be the provider's own.
HOSTILE = {
    "x-api-key": f"sk-{SMUGGLED}",
    "x-goog-api-key": f"sk-{SMUGGLED}",
    "Cookie": f"session={SMUGGLED}",
    "Connection": f"close, X-Custom, {SMUGGLED}",
    "Keep-Alive": f"timeout=5, {SMUGGLED}",
    "Proxy-Authorization": f"Basic {SMUGGLED}",
    "TE": f"trailers, {SMUGGLED}",
    "Upgrade": f"websocket-{SMUGGLED}",
    "Transfer-Encoding": f"gzip-{SMUGGLED}",
    "X-Forwarded-For": f"10.0.0.1, {SMUGGLED}",
    "X-Forwarded-Host": f"{SMUGGLED}.example",
    "X-Forwarded-Proto": f"https-{SMUGGLED}",
    "X-Forwarded-Authorization": f"Bearer {SMUGGLED}",
    "X-Custom": SMUGGLED,
}
# What the gateway itself may send upstream: its own and httpx's headers, the credential, and
# the adapters' allow-lists (proxy/providers/*.py FORWARDED_HEADERS).
UPSTREAM_HEADERS = {"host", "accept", "accept-encoding", "connection", "user-agent", "content-type",
                    "content-length", "authorization", "x-api-key", "x-goog-api-key", "anthropic-version",
                    "anthropic-beta", "accept-language"}
CREDENTIAL_HEADER = {"openai": ("authorization", "Bearer sk-upstream"),
                     "anthropic": ("x-api-key", "sk-upstream"),
                     "gemini": ("x-goog-api-key", "sk-upstream")}
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def kinds(db, sandbox_url, monkeypatch) -> None:
    """A provider of each wire format, all served by the sandbox, each behind route `via-<kind>`."""
    monkeypatch.setenv("TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY", "sk-upstream")
    for kind, path in (("openai", "/v1"), ("anthropic", ""), ("gemini", "/v1beta")):
        provider = Provider.objects.create(name=f"p-{kind}", kind=kind, base_url=f"{sandbox_url}{path}",
                                           api_key_env="TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY")
        route = ModelRoute.objects.create(model=f"via-{kind}", default_max_tokens=333)
        Deployment.objects.create(route=route, provider=provider, upstream_model=f"up-{kind}")


def last_upstream_request(sandbox_url: str) -> dict:
    return httpx.get(f"{sandbox_url}/_sandbox/requests", params={"limit": 1}).json()["requests"][0]


@pytest.mark.parametrize("kind", ["openai", "anthropic", "gemini"])
@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/messages"])
def test_client_headers_outside_the_allow_list_never_reach_the_provider(kinds, personas, sandbox_url, kind,
                                                                       endpoint):
    headers = dict(HOSTILE)
    if endpoint == "/v1/messages":
        headers["anthropic-version"] = "2023-06-01"
    response = call("POST", endpoint, key=personas.alice_key, headers=headers,
                    body={"model": f"via-{kind}", "max_tokens": 5, "messages": HELLO})
    assert response.status_code == 200, response.content
    seen = last_upstream_request(sandbox_url)
    upstream = {name.lower(): value for name, value in seen["headers"].items()}
    assert set(upstream) <= UPSTREAM_HEADERS, set(upstream) - UPSTREAM_HEADERS
    assert SMUGGLED not in orjson.dumps(seen).decode()
    assert personas.alice_key not in orjson.dumps(seen).decode()
    assert upstream["host"] == urlsplit(sandbox_url).netloc
    name, value = CREDENTIAL_HEADER[kind]
    assert upstream[name] == value
    # Only the credential of this provider's kind goes up, not the other kinds' headers.
    assert not {"authorization", "x-api-key", "x-goog-api-key"} - {name} & set(upstream)
