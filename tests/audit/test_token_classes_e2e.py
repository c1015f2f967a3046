"""A real request through the gateway and the sandbox stores its token classes in the audit row (issue #16),
sealed by format 2 of the chain, next to the rows the chain held before."""
from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest

from audit.chain import chain_verify
from audit.models import AuditEvent
from tests.servers import free_port, sandbox_and_gateway, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

UPSTREAM_KEY = "sk-audit-classes-upstream"


def _seed(sandbox: str) -> SimpleNamespace:
    from budgets.keys import key_issue
    from budgets.models import Consumer
    from proxy.models import Deployment, ModelRoute, Provider

    knobs = {"x-sandbox-cache-read-tokens": "600", "x-sandbox-cache-write-tokens": "100",
             "x-sandbox-reasoning-tokens": "5"}
    for name, kind, base in (("classes-oai", "sandbox", f"{sandbox}/v1"), ("classes-claude", "anthropic", sandbox)):
        provider = Provider.objects.create(name=name, kind=kind, base_url=base, extra_headers=knobs,
                                           api_key_env="TOLLGATE_PROVIDER_AUDIT_CLASSES_KEY")
        route = ModelRoute.objects.create(model=name, default_max_tokens=64)
        Deployment.objects.create(route=route, provider=provider, upstream_model=f"{name}-model")
    consumer = Consumer.objects.create(name="classes-team")
    return SimpleNamespace(key=key_issue(consumer=consumer, name="e2e").plaintext)


@pytest.fixture(scope="module")
def gateway(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    sandbox_port = free_port()
    with django_db_blocker.unblock():
        seeded = _seed(f"http://127.0.0.1:{sandbox_port}")
    env = server_env(DATABASE_URL=server_database, TOLLGATE_PROVIDER_AUDIT_CLASSES_KEY=UPSTREAM_KEY)
    with sandbox_and_gateway(env=env, sandbox_port=sandbox_port, workers=1, log_name="classes-") as running:
        yield SimpleNamespace(**vars(running), **vars(seeded), blocker=django_db_blocker)


def _row(gateway, request_id: str) -> AuditEvent:
    deadline = time.monotonic() + 10
    while True:
        with gateway.blocker.unblock():
            row = AuditEvent.objects.filter(request_id=request_id).first()
        if row is not None or time.monotonic() > deadline:
            assert row is not None, "no audit row"
            return row
        time.sleep(0.1)


# A prompt long enough that 700 of its tokens can come from (and go to) the cache.
PROMPT = " ".join(["cached context for the agent"] * 300)


# OpenAI's Chat Completions has no cache-write field the gateway reads, Anthropic's Messages no
# reasoning count (thinking is inside output_tokens): each reports the classes its format has.
@pytest.mark.parametrize(("caller", "writes", "reasoning"), [("openai", 0, 5), ("anthropic", 100, 0)])
def test_a_cached_request_stores_its_token_classes(gateway, caller, writes, reasoning):
    if caller == "openai":
        path, headers = "/v1/chat/completions", {"authorization": f"Bearer {gateway.key}"}
        body = {"model": "classes-oai", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 300}
    else:
        path, headers = "/v1/messages", {"x-api-key": gateway.key, "anthropic-version": "2023-06-01"}
        body = {"model": "classes-claude", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 300}
    response = httpx.post(gateway.url + path, json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    row = _row(gateway, response.headers["x-request-id"])
    assert row.format == 2
    assert (row.cache_read_tokens, row.cache_write_tokens, row.reasoning_tokens) == (600, writes, reasoning)
    assert row.cache_write_1h_tokens == 0
    assert row.prompt_tokens >= 700 and row.usage_source == "provider"
    with gateway.blocker.unblock():
        report = chain_verify()
    assert report.ok, report.problem


def test_the_audit_api_and_export_show_the_token_classes(gateway):
    from audit.exports import export_chunks
    from audit.selectors import events_in_range

    response = httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {gateway.key}"},
                          json={"model": "classes-oai", "messages": [{"role": "user", "content": PROMPT}],
                                "max_tokens": 300},
                          timeout=30)
    request_id = response.headers["x-request-id"]
    _row(gateway, request_id)
    with gateway.blocker.unblock():
        import orjson

        lines = b"".join(export_chunks(events_in_range(), "jsonl")).splitlines()
        csv_text = b"".join(export_chunks(events_in_range(), "csv")).decode()
    record = next(r for r in map(orjson.loads, lines) if r["request_id"] == request_id)
    assert (record["cache_read_tokens"], record["cache_write_tokens"], record["reasoning_tokens"],
            record["format"]) == (600, 0, 5, 2)
    header = csv_text.lstrip("\ufeff").splitlines()[0].split(",")
    assert {"cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens", "lane",
            "lane_seq", "format"} <= set(header)
