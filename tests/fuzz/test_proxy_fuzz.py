"""Hostile and broken input to the proxy endpoints (issue 8; docs/reliability.md).

Whatever arrives, the answer is never a 5xx: a 4xx in the caller's error shape (OpenAI's on
/v1/chat/completions, Anthropic's on /v1/messages), or a normal answer when the input happened
to be valid. In process, through Django's test client, and through the ASGI application itself for
the header limit (it is checked before Django sees the request); tests/fuzz/test_server_limits.py
sends what only a real server can receive (enormous headers over the wire, bodies over the limit).
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from asgiref.sync import async_to_sync
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit.models import AuditEvent
from gateway_site.asgi import application
from tests.proxy.client import GatewayResponse, call

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
ENDPOINTS = {"/v1/chat/completions": "openai", "/v1/messages": "anthropic"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)


def assert_well_formed(response, shape: str) -> None:
    assert response.status_code < 500, (response.status_code, response.content[:500])
    if response.status_code < 400:
        return
    body = orjson.loads(response.content)
    if shape == "anthropic":
        assert body["type"] == "error", body
        assert set(body["error"]) == {"type", "message"} and isinstance(body["error"]["message"], str)
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str)


@pytest.fixture
def key(personas, demo_route) -> str:
    return personas.alice_key


def post(path: str, key: str, *, body: Any = None, raw: bytes | None = None):
    return call("POST", path, key=key, body=body, raw=raw)


@pytest.mark.django_db
@FUZZ
@given(path=st.sampled_from(sorted(ENDPOINTS)), raw=st.binary(max_size=2000))
def test_arbitrary_bytes_are_a_4xx_in_the_callers_shape(key, path, raw):
    assert_well_formed(post(path, key, raw=raw), ENDPOINTS[path])


@pytest.mark.django_db
@FUZZ
@given(path=st.sampled_from(sorted(ENDPOINTS)), value=json_values)
def test_any_json_value_is_refused_or_answered_never_a_5xx(key, path, value):
    assert_well_formed(post(path, key, body=value), ENDPOINTS[path])


FIELDS = ["model", "messages", "stream", "max_tokens", "temperature", "tools", "tool_choice", "stop", "system",
          "stream_options", "n", "top_p", "stop_sequences", "max_completion_tokens", "metadata"]


@pytest.mark.django_db
@FUZZ
@given(path=st.sampled_from(sorted(ENDPOINTS)),
       changes=st.dictionaries(st.sampled_from(FIELDS), json_values, min_size=1, max_size=4),
       message=st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id"]),
                               json_values, max_size=4))
def test_a_valid_request_with_fields_of_wrong_types_is_never_a_5xx(key, path, changes, message):
    body = {"model": "demo", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}, message], **changes}
    assert_well_formed(post(path, key, body=body), ENDPOINTS[path])


@pytest.mark.django_db
@pytest.mark.parametrize("path", sorted(ENDPOINTS))
@pytest.mark.parametrize("raw", [
    b"[" * 200_000,  # deeper than any JSON parser recurses
    b'{"model": "demo", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"model": "demo", "messages": [{"role": "user", "content": "\xff\xfe\xed"}]}',  # invalid UTF-8
    b'{"model": "demo", "messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate
    b'{"model": "demo", "model": 1, "messages": []}',
    b"\x00" * 1000,
    b'{"model": 1e999999, "messages": [1]}',
    b"",
    b'{"model": "demo", "messages": [{"role": {"a": 1}, "content": "hi"}]}',  # found by the fuzzer: was a 500
    b'{"model": "demo", "messages": [{"role": ["user"], "content": "hi"}]}',
], ids=["deep", "deep-messages", "invalid-utf8", "lone-surrogate", "duplicate-keys", "nul", "huge-number",
        "empty", "role-object", "role-array"])
def test_pathological_bodies_are_a_4xx(key, path, raw):
    assert_well_formed(post(path, key, raw=raw), ENDPOINTS[path])


@pytest.mark.django_db
@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_thousands_of_messages_are_served_or_refused_cleanly(key, path):
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"} for i in range(5001)]
    response = post(path, key, body={"model": "demo", "max_tokens": 10, "messages": messages})
    assert_well_formed(response, ENDPOINTS[path])


@pytest.mark.django_db
@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_a_body_over_the_limit_is_a_413_in_the_callers_shape(key, path, settings):
    settings.TOLLGATE_MAX_BODY_BYTES = settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    big = {"model": "demo", "messages": [{"role": "user", "content": "x" * 100_000}]}
    response = post(path, key, body=big)
    assert response.status_code == 413
    assert_well_formed(response, ENDPOINTS[path])


@pytest.mark.django_db
@FUZZ
@given(path=st.sampled_from(sorted(ENDPOINTS)), value=json_values)
@override_settings(TOLLGATE_PROBE_SLOW_AFTER=10_000, TOLLGATE_PROBE_BLOCK_AFTER=10_000)
def test_garbage_without_a_key_is_the_same_401(path, value):
    response = post(path, None, body=value)
    assert response.status_code == 401
    assert_well_formed(response, ENDPOINTS[path])


async def _asgi_post(path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, dict, bytes]:
    """One request through gateway_site.asgi.application, as uvicorn would hand it over."""
    sent: list[dict] = []
    answered = asyncio.Event()
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            answered.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 40000), "server": ("localhost", 80)}
    await application(scope, receive, send)
    start = sent[0]
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent[1:]))


def asgi_post(path: str, key: str, *, extra: list[tuple[str, str]], body: Any = None) -> GatewayResponse:
    headers = [(b"host", b"localhost"), (b"content-type", b"application/json"),
               (b"authorization", f"Bearer {key}".encode())]
    if path == "/v1/messages":
        headers.append((b"anthropic-version", b"2023-06-01"))
    headers += [(name.encode(), value.encode()) for name, value in extra]
    body = body or {"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    return GatewayResponse(*async_to_sync(_asgi_post)(path, headers, orjson.dumps(body)))


OVERSIZED_HEADERS = {
    "one-100kb-header": [("x-junk", "a" * 100_000)],
    "many-small-headers": [(f"x-h{i}", "v" * 20) for i in range(2000)],  # 2 000 x ~25 bytes, each one harmless
}


@pytest.mark.django_db
@pytest.mark.parametrize("path", sorted(ENDPOINTS))
@pytest.mark.parametrize("junk", sorted(OVERSIZED_HEADERS))
def test_headers_over_the_limit_are_a_431_in_the_callers_shape_before_any_work(key, path, junk):
    events = AuditEvent.objects.count()
    response = asgi_post(path, key, extra=OVERSIZED_HEADERS[junk])
    assert response.status_code == 431
    assert response.headers["content-type"] == "application/json"
    assert_well_formed(response, ENDPOINTS[path])
    error = response.json()["error"]
    if ENDPOINTS[path] == "anthropic":
        assert error["type"] == "request_too_large"
    else:
        assert (error["type"], error["code"]) == ("invalid_request_error", "request_headers_too_large")
    assert "32768" in error["message"]
    # Refused before the key was looked up or anything recorded: no audit event for it.
    assert AuditEvent.objects.count() == events


@pytest.mark.django_db
@pytest.mark.parametrize("path", sorted(ENDPOINTS))
def test_headers_under_the_limit_are_served(key, path):
    response = asgi_post(path, key, extra=[("x-junk", "a" * 20_000), *[(f"x-h{i}", "v") for i in range(200)]])
    assert response.status_code == 200, response.content
    assert "x-request-id" in response.headers


@pytest.mark.django_db
def test_the_header_limit_is_the_setting_and_covers_every_path(key, settings):
    settings.TOLLGATE_MAX_HEADER_BYTES = 8192
    assert asgi_post("/v1/chat/completions", key, extra=[("x-junk", "a" * 10_000)]).status_code == 431
    assert asgi_post("/v1/chat/completions", key, extra=[("x-junk", "a" * 6_000)]).status_code == 200
    # Other paths: the admin too, and /v1/models in Anthropic's shape when Anthropic's SDK asks.
    assert asgi_post("/admin/login/", key, extra=[("x-junk", "a" * 10_000)]).status_code == 431
    models = asgi_post("/v1/models", key, extra=[("anthropic-version", "2023-06-01"), ("x-junk", "a" * 10_000)])
    assert models.status_code == 431 and models.json()["type"] == "error"
