"""Hostile and broken input to the proxy endpoints (issue 8; docs/reliability.md).

Whatever arrives, the answer is never a 5xx: a 4xx in the caller's error shape (OpenAI's on
/v1/chat/completions, Anthropic's on /v1/messages), or a normal answer when the input happened
to be valid. In process, through Django's test client; tests/fuzz/test_server_limits.py sends
what only a real server can receive (enormous headers, bodies over the limit).
"""
from __future__ import annotations

from typing import Any

import orjson
import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.proxy.client import call

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
