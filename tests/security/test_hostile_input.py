"""Hostile input is refused before anything is stored or forwarded, and probing is watched on every
path (issue #15; docs/reliability.md, Hostile input and Probing). In process; the real server's side
(bodies read while they arrive, auth before body, IPv6 through a trusted proxy) is in
tests/security/test_hostile_server.py."""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from asgiref.sync import async_to_sync
from django.test import RequestFactory, override_settings

from audit.models import AuditEvent
from gateway_site.lib.clientaddr import address_block
from proxy.errors import GatewayError
from proxy.parsing import BODY_REFUSED, MAX_DEPTH, _within_depth, check_model_name, read_json_object
from proxy.probing import _failed_auth
from tests.proxy.client import call, chat

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "hi"}]
NO_PROBE_LIMITS = override_settings(TOLLGATE_PROBE_SLOW_AFTER=10_000, TOLLGATE_PROBE_BLOCK_AFTER=10_000)


def nested(depth: int) -> object:
    """`depth` levels of arrays and objects, alternating, around a string."""
    value: object = "deep"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


# --- Nesting depth --------------------------------------------------------------------------


def test_the_depth_check_counts_levels_exactly():
    assert _within_depth(nested(10), 10) and not _within_depth(nested(11), 10)
    assert _within_depth("flat", 0) and _within_depth([], 1) and not _within_depth([[]], 1)
    # Wide is not deep: 10 000 siblings at one level.
    assert _within_depth([{"a": [1, 2]} for _ in range(10_000)], 3)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_a_body_nested_deeper_than_the_limit_is_a_400_naming_the_field(personas, demo_route, path):
    # The body object is level 1, `messages` level 2, each message level 3: content at level 4.
    body = {"model": "demo", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi", "metadata": nested(MAX_DEPTH - 2)}]}
    headers = {"anthropic-version": "2023-06-01"}
    response = call("POST", path, key=personas.alice_key, body=body, headers=headers)
    assert response.status_code == 400, response.content
    if path == "/v1/messages":
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert "nested deeper than 64 levels" in response.json()["error"]["message"]
    else:
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("nesting_too_deep", "messages")
    # One level less is within the limit: the sandbox answers (it ignores unknown message fields).
    body["messages"][0]["metadata"] = nested(MAX_DEPTH - 3)
    assert call("POST", path, key=personas.alice_key, body=body, headers=headers).status_code == 200


def test_a_body_deeper_than_the_json_readers_own_limit_is_the_same_400(personas, demo_route):
    raw = b'{"model": "demo", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    response = call("POST", "/v1/chat/completions", key=personas.alice_key, raw=raw)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "nesting_too_deep"


# --- Control characters and lone surrogates -------------------------------------------------


# NUL is checked the same way (test_a_nul_or_a_lone_surrogate_is_refused_in_a_model_name); end to end it
# needs the audit to store a refused request's NUL (audit/storable.py, issue #15's audit half).
@pytest.mark.parametrize("model", ["demo\n", "\x1bdemo", "de\x7fmo", "de\x01mo"])
def test_a_control_character_in_the_model_is_a_400_before_the_route_is_looked_up(personas, demo_route, model):
    events = AuditEvent.objects.count()
    response = chat(personas.alice_key, {"model": model, "messages": HELLO})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "model"
    anthropic = call("POST", "/v1/messages", key=personas.alice_key, headers={"anthropic-version": "2023-06-01"},
                     body={"model": model, "max_tokens": 5, "messages": HELLO})
    assert anthropic.status_code == 400 and anthropic.json()["type"] == "error"
    # Recorded as refusals (the audit stores what it can), never a 500.
    assert AuditEvent.objects.count() == events + 2


def test_a_nul_or_a_lone_surrogate_is_refused_in_a_model_name_and_in_json():
    for name in ("de\x00mo", "demo\ud800", "\udfffdemo"):
        with pytest.raises(GatewayError) as caught:
            check_model_name(name)
        assert (caught.value.status, caught.value.param) == (400, "model")
    check_model_name("claude-sonnet-4.5@20250929 ü")  # anything else is the provider's to judge
    request = RequestFactory().post("/v1/chat/completions", data=b'{"model": "demo\\ud800", "messages": []}',
                                    content_type="application/json")
    with pytest.raises(GatewayError) as caught:
        read_json_object(request)
    assert caught.value.status == 400


def test_a_model_name_in_the_path_is_checked_too(personas, demo_route):
    response = call("GET", "/v1/models/de%1Bmo", key=personas.alice_key)
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


@pytest.mark.parametrize("header", ["anthropic-beta", "accept-language", "x-provider"])
def test_a_control_character_in_a_forwarded_header_is_a_400_naming_it(personas, demo_route, header):
    response = chat(personas.alice_key, {"model": "demo", "messages": HELLO}, headers={header: "a\x00b"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == header
    # A tab is allowed in a header value (RFC 9110); headers the gateway does not forward are not its business.
    assert chat(personas.alice_key, {"model": "demo", "messages": HELLO},
                headers={"anthropic-beta": "a\tb", "x-unforwarded": "a\x01b"}).status_code == 200


# --- A body the entry point refused to read further -------------------------------------------


@pytest.mark.parametrize(("refusal", "status"), [("too_large", 413), ("timeout", 408)])
def test_a_body_the_entry_point_stopped_reading_is_refused_in_the_callers_shape(refusal, status):
    request = RequestFactory().post("/v1/chat/completions", data=b'{"model": "demo"', content_type="application/json")
    request.META[BODY_REFUSED] = refusal
    with pytest.raises(GatewayError) as caught:
        read_json_object(request)
    assert caught.value.status == status


# --- Probing: every path, authentication first ------------------------------------------------


@NO_PROBE_LIMITS
@pytest.mark.parametrize("key", [None, "tg-unknown-0000000000000000000000000000"])
def test_a_wrong_method_without_a_key_is_the_same_401_as_an_unknown_path(personas, demo_route, key):
    unknown = call("GET", "/v1/no-such-endpoint", key=key)
    # Anthropic's paths answer in Anthropic's shape, as an unknown path does for Anthropic's SDK.
    unknown_anthropic = call("GET", "/v1/no-such-endpoint", key=key, headers={"anthropic-version": "2023-06-01"})
    assert unknown.status_code == unknown_anthropic.status_code == 401
    for method, path, expected in (("GET", "/v1/chat/completions", unknown), ("PUT", "/v1/models", unknown),
                                   ("DELETE", "/v1/models/demo", unknown), ("GET", "/v1/messages", unknown_anthropic),
                                   ("GET", "/v1/messages/count_tokens", unknown_anthropic)):
        response = call(method, path, key=key)
        assert (response.status_code, response.content) == (401, expected.content), (method, path)


def test_a_wrong_method_with_a_valid_key_is_still_a_405(personas, demo_route):
    assert call("GET", "/v1/chat/completions", key=personas.alice_key).status_code == 405
    assert call("GET", "/v1/messages/count_tokens", key=personas.alice_key).status_code == 405


@override_settings(TOLLGATE_PROBE_SLOW_AFTER=10_000, TOLLGATE_PROBE_BLOCK_AFTER=4, TOLLGATE_PROBE_BLOCK_SECONDS=60)
@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/demo", "/v1/anything", "/v1/messages/count_tokens"])
def test_bad_keys_are_throttled_on_every_path(personas, demo_route, path):
    statuses = [call("GET", path, key=f"tg-guess-{n}").status_code for n in range(6)]
    assert statuses == [401, 401, 401, 429, 429, 429]
    # A valid key from the same address is still served.
    assert call("GET", "/v1/models", key=personas.alice_key).status_code == 200


def test_ipv6_addresses_are_counted_per_64_and_ipv4_per_address():
    assert address_block("2001:db8:1:2:aaaa::1") == address_block("2001:db8:1:2:ffff:1:2:3") == "2001:db8:1:2::/64"
    assert address_block("2001:db8:1:3::1") != address_block("2001:db8:1:2::1")
    assert address_block("203.0.113.7") == "203.0.113.7" != address_block("203.0.113.8")
    assert address_block("::ffff:203.0.113.7") == "203.0.113.7"  # an IPv4 client through an IPv6 socket
    assert address_block("not-an-address") == "not-an-address"


@override_settings(TOLLGATE_PROBE_BLOCK_AFTER=3, TOLLGATE_PROBE_BLOCK_SECONDS=60)
def test_two_ipv6_addresses_in_one_64_share_a_counter(db):
    assert _failed_auth("2001:db8:5:6::1") == (False, 1)
    assert _failed_auth("2001:db8:5:6:ffff::2") == (False, 2)
    assert _failed_auth("2001:db8:5:6::3")[0] is True
    assert _failed_auth("2001:db8:5:7::1") == (False, 1)


def test_enumerating_model_names_with_a_valid_key_raises_the_model_probing_alert(personas, demo_route, caplog):
    with override_settings(TOLLGATE_PROBE_MODEL_ALERT_AFTER=4):
        for name in ("gpt-4o", "claude-3-opus", "o1", "gemini-pro", "llama", "demo"):
            call("GET", f"/v1/models/{name}", key=personas.alice_key)
    alerts = [r for r in caplog.records if r.name == "tollgate.security" and "model_probing" in r.getMessage()]
    assert len(alerts) == 2  # one for the key, one for the address
    assert {getattr(r, "distinct_models", None) for r in alerts} == {4}


@override_settings(TOLLGATE_PROBE_SLOW_AFTER=10_000, TOLLGATE_PROBE_BLOCK_AFTER=10_000,
                   TOLLGATE_PROBE_MODEL_ALERT_AFTER=3)
def test_anonymous_enumeration_of_model_urls_raises_the_alert_without_a_body(personas, demo_route, caplog):
    for name in ("a", "b", "c"):
        assert call("GET", f"/v1/models/{name}", key=None).status_code == 401
    assert any(getattr(r, "alert", None) == "model_probing" and getattr(r, "address", None) == "127.0.0.1"
               for r in caplog.records)


# --- The ASGI entry point, in process ------------------------------------------------------


async def _through_entry_point(headers: list[tuple[bytes, bytes]], chunks: list[bytes], *, path: str,
                               pause: float = 0.0) -> tuple[int, dict[str, str], bytes, int]:
    """One request through gateway_site.asgi.application: (status, headers, body, body messages read)."""
    from gateway_site.asgi import application

    sent: list[dict] = []
    read = 0

    async def receive() -> dict:
        nonlocal read
        if read < len(chunks):
            read += 1
            if pause:
                await asyncio.sleep(pause)
            return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 40000),
             "server": ("localhost", 80)}
    await asyncio.wait_for(application(scope, receive, send), timeout=20)
    start = sent[0]
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent[1:]), read)


def through_entry_point(headers, chunks, *, path="/v1/chat/completions", pause=0.0):
    return async_to_sync(_through_entry_point)(headers, chunks, path=path, pause=pause)


@NO_PROBE_LIMITS
def test_the_entry_point_never_reads_the_body_of_a_request_without_a_valid_key(personas, demo_route):
    for auth in ([], [(b"authorization", b"Bearer tg-unknown-0000000000000000000000000000")],
                 [(b"authorization", f"Bearer {personas.revoked_key}".encode())]):
        status, headers, _body, read = through_entry_point(
            [(b"content-length", b"40"), *auth], [b"x" * 10, b"x" * 10, b"x" * 10, b"x" * 10])
        assert (status, read) == (401, 0)
        assert headers["connection"] == "close"  # the unread body is not drained either


def test_the_entry_point_stops_reading_at_the_limit(personas, demo_route, settings):
    settings.TOLLGATE_MAX_BODY_BYTES = 4096
    key = [(b"authorization", f"Bearer {personas.alice_key}".encode()), (b"transfer-encoding", b"chunked")]
    status, headers, body, read = through_entry_point(key, [b"x" * 1024] * 100)
    assert status == 413 and read == 5  # the fifth chunk passed the limit; the 95 others were never read
    assert headers["connection"] == "close" and orjson.loads(body)["error"]["type"] == "invalid_request_error"
    # Declared too large: not one chunk is read.
    declared = [(b"authorization", f"Bearer {personas.alice_key}".encode()), (b"content-length", b"99999")]
    status, headers, body, read = through_entry_point(declared, [b"x" * 1024] * 100)
    assert (status, read) == (413, 0)
    # The refusal is recorded like any other.
    assert AuditEvent.objects.filter(status=413).count() == 2


def test_the_entry_point_gives_a_slow_body_a_408(personas, demo_route, settings):
    settings.TOLLGATE_BODY_READ_TIMEOUT_SECONDS = 0.3
    key = [(b"authorization", f"Bearer {personas.alice_key}".encode()), (b"content-length", b"1000")]
    started = time.monotonic()
    status, headers, body, _read = through_entry_point(key, [b"x"] * 1000, pause=0.1)
    assert status == 408 and headers["connection"] == "close"
    assert time.monotonic() - started < 3
    assert orjson.loads(body)["error"]["code"] == "request_body_timeout"


def test_the_entry_point_serves_a_body_within_the_limits(personas, demo_route):
    body = orjson.dumps({"model": "demo", "messages": HELLO})
    key = [(b"authorization", f"Bearer {personas.alice_key}".encode()), (b"content-type", b"application/json"),
           (b"content-length", str(len(body)).encode())]
    status, headers, content, _read = through_entry_point(key, [body[:10], body[10:]])
    assert status == 200, content
    assert "connection" not in headers
