"""Every request that reaches a proxy endpoint leaves exactly one audit event, with no secret in it."""
from __future__ import annotations

import orjson
import pytest
from django.test import override_settings

from audit.chain import chain_verify
from audit.models import AuditEvent, BodyMode
from proxy.errors import GatewayError
from proxy.models import Deployment, ModelRoute, Provider
from tests.audit.conftest import all_events
from tests.proxy.client import call, chat
from tests.servers import free_port

HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello there"}]}
UPSTREAM_SECRET = "upstream-credential-Zq81"  # no known key shape: only the literal redaction catches it
PROVIDER_KEYS = ("sk-proj-AbCdEfGhIjKlMnOpQrSt1234", "sk-ant-api03-AbCdEfGhIjKlMnOp-QrSt",
                 "AIzaSyA1b2C3d4E5f6G7h8I9j0KlMnOpQrStUvW")
BEARER = "eyJhbGciOiJIUzI1NiJ9.payload.signature"

pytestmark = pytest.mark.django_db


def only_event() -> AuditEvent:
    events = all_events()
    assert len(events) == 1, [(e.endpoint, e.status, e.error_class) for e in events]
    return events[0]


def route(name: str, provider: Provider) -> ModelRoute:
    r = ModelRoute.objects.create(model=name)
    Deployment.objects.create(route=r, provider=provider, upstream_model=f"{name}-upstream")
    return r


@pytest.fixture
def faulty(sandbox_url):
    """Routes whose provider fails in one way each."""
    def provider(name: str, **kwargs) -> Provider:
        return Provider.objects.create(name=name, kind="sandbox", base_url=f"{sandbox_url}/v1", **kwargs)

    route("fails-500", provider("p500", extra_headers={"x-sandbox-fail-status": "500"}))
    route("fails-429", provider("p429", extra_headers={"x-sandbox-fail-status": "429"}))
    route("hangs", provider("phang", extra_headers={"x-sandbox-hang-ms": "3000"}, timeout_seconds=0.3))
    down = Provider.objects.create(name="pdown", kind="sandbox", base_url=f"http://127.0.0.1:{free_port()}/v1")
    route("down", down)


def test_an_answered_request_is_recorded_with_everything_compliance_asks_for(personas, demo_route):
    response = chat(personas.alice_key, HELLO, headers={"User-Agent": "agent/1.0"})
    assert response.status_code == 200
    event = only_event()
    usage = response.json()["usage"]
    assert event.request_id == response.headers["x-request-id"]
    assert (event.consumer_id, event.consumer_name) == (personas.alice.pk, "alice-agent")
    assert event.key_prefix == personas.alice_key[:10]
    assert (event.route, event.provider, event.upstream_model) == ("demo", "sandbox", "sandbox-model")
    assert (event.endpoint, event.status, event.error_class) == ("chat.completions", 200, "")
    assert (event.prompt_tokens, event.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert event.attempts == 1
    assert event.latency_us > 0
    assert event.client_ip == "127.0.0.1"
    assert event.user_agent == "agent/1.0"
    assert event.body_mode == BodyMode.METADATA  # the default
    assert orjson.loads(event.request_body) == {"model": "demo", "message_count": 1}
    assert event.response_body == ""
    assert chain_verify().ok


def test_a_stream_is_recorded_with_its_time_to_first_token(personas, demo_route):
    response = chat(personas.alice_key, {**HELLO, "stream": True})
    assert response.sse_events()[-1] == b"data: [DONE]"
    event = only_event()
    assert event.status == 200 and event.completion_tokens > 0
    assert event.ttft_us is not None and 0 < event.ttft_us <= event.latency_us


@pytest.mark.parametrize(("kind", "key", "body", "status", "error_class"), [
    ("missing key", None, HELLO, 401, "missing_api_key"),
    ("unknown key", "tg-" + "x" * 43, HELLO, 401, "invalid_api_key"),
    ("revoked key", "revoked", HELLO, 401, "invalid_api_key"),
    ("bad json", "alice", b"{not json", 400, "invalid_request"),
    ("no messages", "alice", {"model": "demo"}, 400, "missing_required_parameter"),
    ("unknown model", "alice", {**HELLO, "model": "no-such-model"}, 404, None),
])
def test_every_refusal_is_recorded(personas, demo_route, kind, key, body, status, error_class):
    key = {"alice": personas.alice_key, "revoked": personas.revoked_key}.get(key, key)
    raw = body if isinstance(body, bytes) else None
    response = chat(key, None if raw else body, raw=raw)
    assert response.status_code == status, response.content
    event = only_event()
    assert event.status == status
    assert event.request_id == response.headers["x-request-id"]
    if error_class:
        assert event.error_class == error_class
    else:
        assert event.error_class
    if kind == "unknown model":
        assert event.route == "no-such-model"
    if status == 401:
        assert event.consumer_name == "" and event.key_prefix == ""


def test_an_oversized_body_is_recorded_as_413(personas, demo_route):
    with override_settings(TOLLGATE_MAX_BODY_BYTES=1024):
        response = chat(personas.alice_key, {**HELLO, "messages": [{"role": "user", "content": "x" * 5000}]})
    assert response.status_code == 413
    assert only_event().status == 413


def test_a_wrong_method_is_recorded(personas):
    response = call("GET", "/v1/chat/completions", key=personas.alice_key)
    assert response.status_code == 405
    assert only_event().status == 405


def test_a_rate_limit_refusal_is_recorded(personas, demo_route, monkeypatch):
    async def refuse(ctx, body, **kwargs):
        raise GatewayError("rate_limit", "Too many requests.", code="rate_limit_exceeded",
                           headers={"retry-after": "3"})

    monkeypatch.setattr("proxy.pipeline.admit", refuse)
    response = chat(personas.alice_key, HELLO)
    assert response.status_code == 429
    event = only_event()
    assert (event.status, event.error_class, event.consumer_name) == (429, "rate_limit_exceeded", "alice-agent")


@pytest.mark.parametrize(("model", "status"), [
    ("fails-500", 500), ("fails-429", 429), ("hangs", 504), ("down", 502),
])
def test_every_upstream_error_is_recorded(personas, faulty, model, status):
    response = chat(personas.alice_key, {**HELLO, "model": model})
    assert response.status_code == status, response.content
    event = only_event()
    assert event.status == status
    assert event.error_class
    assert event.provider and event.attempts >= 1


def test_an_internal_error_is_recorded(personas, demo_route, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("proxy.pipeline.resolve_route_watched", broken)
    response = chat(personas.alice_key, HELLO)
    assert response.status_code == 500
    assert (only_event().status, only_event().error_class) == (500, "internal_error")


@pytest.mark.parametrize(("path", "status", "endpoint"), [
    ("/v1/models", 200, "models.list"),
    ("/v1/models/demo", 200, "models.retrieve"),
    ("/v1/models/nope", 404, "models.retrieve"),
    ("/v1/completions", 404, "unknown"),
    ("/v1/embeddings", 405, "embeddings"),
])
def test_the_other_proxy_endpoints_are_recorded(personas, demo_route, path, status, endpoint):
    response = call("GET", path, key=personas.alice_key)
    assert response.status_code == status
    event = only_event()
    assert (event.endpoint, event.status, event.consumer_name) == (endpoint, status, "alice-agent")
    assert event.request_id == response.headers["x-request-id"]


@override_settings(TOLLGATE_TRUSTED_PROXIES=["127.0.0.1"])
@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/demo", "/v1/embeddings", "/v1/chat/completions"])
def test_every_proxy_endpoint_records_the_client_behind_a_trusted_proxy(personas, demo_route, path):
    method = "POST" if path == "/v1/chat/completions" else "GET"
    call(method, path, key=personas.alice_key, body=HELLO, headers={"X-Forwarded-For": "203.0.113.9"})
    assert only_event().client_ip == "203.0.113.9"


def test_an_anonymous_probe_of_any_path_is_recorded(db):
    for path in ("/v1/models", "/v1/models/gpt-4o", "/v1/admin/secrets"):
        assert call("GET", path).status_code == 401
    assert [(e.status, e.error_class) for e in all_events()] == [(401, "missing_api_key")] * 3


def body_mode_set(consumer, mode: str) -> None:
    consumer.audit_body_mode = mode
    consumer.save()


def test_full_bodies_are_stored_redacted_and_cut(personas, demo_route):
    body_mode_set(personas.alice, BodyMode.FULL)
    text = "mail me at jane.doe@example.com, card 4111 1111 1111 1111, " + "z" * 40_000
    with override_settings(TOLLGATE_AUDIT_BODY_MAX_CHARS=2000):
        response = chat(personas.alice_key, {**HELLO, "messages": [{"role": "user", "content": text}]})
    assert response.status_code == 200
    event = only_event()
    assert event.body_mode == BodyMode.FULL
    assert "[REDACTED:email]" in event.request_body and "[REDACTED:card]" in event.request_body
    assert "jane.doe" not in event.request_body and "4111" not in event.request_body
    assert len(event.request_body) <= 2000 + len("…[cut]")
    assert event.response_body.startswith("{") and "chat.completion" in event.response_body


def test_no_body_is_stored_in_mode_none(personas, demo_route):
    body_mode_set(personas.alice, BodyMode.NONE)
    chat(personas.alice_key, HELLO)
    event = only_event()
    assert (event.body_mode, event.request_body, event.response_body) == (BodyMode.NONE, "", "")


def test_the_body_mode_comes_with_the_key_lookup(personas, settings):
    from dataclasses import replace

    from budgets.keys import key_digest
    from budgets.selectors import key_info_by_digest
    from proxy.context import RequestContext
    from proxy.errors import Caller

    body_mode_set(personas.alice, BodyMode.NONE)
    info = key_info_by_digest(key_digest(personas.alice_key))
    assert info.audit_body_mode == BodyMode.NONE
    ctx = RequestContext(caller=Caller.OPENAI, endpoint="chat.completions", key=info)
    assert ctx.audit_body_mode == BodyMode.NONE
    settings.TOLLGATE_AUDIT_DEFAULT_BODY_MODE = BodyMode.FULL
    ctx.key = replace(info, audit_body_mode=None)  # not set: the gateway's default
    assert ctx.audit_body_mode == BodyMode.FULL


def test_a_body_mode_change_reaches_the_worker_cache(personas, demo_route, django_capture_on_commit_callbacks):
    chat(personas.alice_key, HELLO)  # caches the key's entry, with the default mode ("metadata")
    with django_capture_on_commit_callbacks(execute=True):
        body_mode_set(personas.alice, BodyMode.FULL)
    chat(personas.alice_key, HELLO)
    assert [e.body_mode for e in all_events()] == [BodyMode.METADATA, BodyMode.FULL]


def test_no_secret_appears_in_any_stored_field(personas, demo_route, faulty, monkeypatch):
    """Keys in headers, bodies, model names and user agents; search every column of every event."""
    monkeypatch.setenv("TOLLGATE_PROVIDER_AUDIT_TEST_UPSTREAM", UPSTREAM_SECRET)
    Provider.objects.filter(name="sandbox").update(api_key_env="TOLLGATE_PROVIDER_AUDIT_TEST_UPSTREAM")
    body_mode_set(personas.alice, BodyMode.FULL)
    leaky = (f"my key is {personas.alice_key}, bob's is {personas.bob_key}, old one {personas.revoked_key}; "
             f"provider keys {' '.join(PROVIDER_KEYS)}; header Authorization: Bearer {BEARER}")
    body = {**HELLO, "messages": [{"role": "user", "content": leaky}]}
    # A credential of no known shape is redacted as a literal wherever its provider is used.
    upstream = {**HELLO, "messages": [{"role": "user", "content": f"{leaky}, upstream {UPSTREAM_SECRET}"}]}
    chat(personas.alice_key, upstream)
    chat(personas.alice_key, {**upstream, "stream": True})
    chat(personas.alice_key, {**body, "model": "fails-500"})
    chat(personas.alice_key, {**body, "model": personas.bob_key})  # a key pasted as the model name
    chat(personas.revoked_key, body)
    chat(personas.alice_key, body, headers={"User-Agent": f"curl {personas.bob_key} {PROVIDER_KEYS[0]}"})
    call("GET", f"/v1/models/{personas.bob_key}", key=personas.alice_key)
    call("GET", "/v1/models", key=personas.bob_key, headers={"User-Agent": f"Bearer {BEARER}"})
    events = AuditEvent.objects.values_list()
    assert len(events) == 8
    stored = orjson.dumps([list(map(str, row)) for row in events]).decode()
    secrets = (personas.alice_key, personas.bob_key, personas.revoked_key, *PROVIDER_KEYS, BEARER,
               UPSTREAM_SECRET)
    for secret in secrets:
        assert secret not in stored
        assert secret[5:25] not in stored, "no long piece of a secret either"
    assert "[REDACTED:gateway-key]" in stored and "[REDACTED:provider-key]" in stored


def test_a_stream_releases_its_terminal_event_only_after_the_audit_event_is_stored(personas, demo_route):
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    seen: list[tuple[bool, bool]] = []

    async def stream() -> None:
        response = await AsyncClient().post(
            "/v1/chat/completions", data=orjson.dumps({**HELLO, "stream": True}), content_type="application/json",
            headers={"Authorization": f"Bearer {personas.alice_key}"})
        async for chunk in response.streaming_content:
            seen.append((b"[DONE]" in chunk, await AuditEvent.objects.aexists()))

    async_to_sync(stream)()
    assert seen[-1] == (True, True), "the terminal event comes after the audit event"
    assert not any(stored for done, stored in seen[:-1]), "the event is written when the stream ends"


def test_anthropic_messages_and_token_counting_are_recorded(personas, demo_route):
    body = {"model": "demo", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    assert call("POST", "/v1/messages", body=body, headers={"x-api-key": personas.alice_key}).status_code == 200
    call("POST", "/v1/messages/count_tokens", body=body, headers={"x-api-key": personas.alice_key})
    assert [(e.endpoint, e.consumer_name) for e in all_events()] == [
        ("messages", "alice-agent"), ("messages.count_tokens", "alice-agent")]
