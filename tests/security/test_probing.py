"""An unauthenticated caller learns nothing; probers are slowed, blocked, audited and reported
(issue 8; docs/reliability.md). In process; tests/security/test_server.py checks the real server."""
from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import orjson
import pytest
from django.test import Client, override_settings

from audit.models import AuditEvent
from budgets.keys import key_issue, key_revoke
from proxy.probing import _failed_auth
from tests.proxy.client import call

pytestmark = pytest.mark.django_db

HELLO = [{"role": "user", "content": "hi"}]
# Probing defence out of the way, for tests about what a single failure looks like.
NO_PROBE_LIMITS = override_settings(TOLLGATE_PROBE_SLOW_AFTER=10_000, TOLLGATE_PROBE_BLOCK_AFTER=10_000)


def post(path: str, key: str | None, model: str = "demo", **kwargs):
    return call("POST", path, key=key, body={"model": model, "max_tokens": 5, "messages": HELLO}, **kwargs)


@NO_PROBE_LIMITS
def test_a_bad_key_gets_the_same_401_whatever_the_model_or_path(personas, demo_route):
    for key in ("tg-unknown-0000000000000000000000000000", personas.revoked_key):
        answers = set()
        for model in ("demo", "gpt-4o", "claude-3-opus", "no-such-model", ""):
            answers.add((post("/v1/chat/completions", key, model).status_code,
                         post("/v1/chat/completions", key, model).content))
        for path in ("/v1/models", "/v1/models/demo", "/v1/embeddings", "/v1/completions", "/v1/anything"):
            response = call("GET", path, key=key)
            answers.add((response.status_code, response.content))
        assert len(answers) == 1, answers
        status, body = answers.pop()
        assert status == 401 and b"demo" not in body
    unknown = post("/v1/messages", "tg-unknown-0000000000000000000000000000")
    revoked = post("/v1/messages", personas.revoked_key)
    assert (unknown.status_code, unknown.content) == (revoked.status_code, revoked.content)


@NO_PROBE_LIMITS
def test_no_model_list_or_version_without_a_key(personas, demo_route):
    for response in (call("GET", "/v1/models", key=None), call("GET", "/v1/models", key="tg-nope")):
        assert response.status_code == 401
        assert b"demo" not in response.content and not re.search(rb"\d+\.\d+", response.content)
        assert "server" not in response.headers


def assert_names_no_product(status: int, headers: dict[str, str], body: bytes, what: str) -> None:
    """Neither the body nor a header (name or value) says which gateway answers; x-request-id may be there."""
    seen = " ".join(f"{name}: {value}" for name, value in headers.items()).lower()
    assert "tollgate" not in seen, (what, status, headers)
    assert b"tollgate" not in body.lower(), (what, status, body[:500])
    assert "server" not in headers and "x-powered-by" not in headers, (what, headers)


@NO_PROBE_LIMITS
def test_nothing_an_anonymous_caller_receives_names_the_product(personas, demo_route):
    for key in (None, "tg-unknown-0000000000000000000000000000", personas.revoked_key):
        answers = [post("/v1/chat/completions", key), post("/v1/messages", key),
                   post("/v1/messages/count_tokens", key), call("GET", "/v1/chat/completions", key=key)]
        answers += [call("GET", path, key=key) for path in ("/v1/models", "/v1/models/demo", "/v1/embeddings")]
        for response in answers:
            assert response.status_code in (401, 405), (response.status_code, response.content)
            assert_names_no_product(response.status_code, response.headers, response.content, key)
            assert "x-request-id" in response.headers
    # The probing defence's 429 too.
    with override_settings(TOLLGATE_PROBE_BLOCK_AFTER=1, TOLLGATE_PROBE_BLOCK_SECONDS=60):
        blocked = post("/v1/chat/completions", "tg-guess")
    assert blocked.status_code == 429
    assert_names_no_product(blocked.status_code, blocked.headers, blocked.content, "blocked")


def test_no_other_public_answer_names_the_product(db):
    """The health probes, /metrics refused to a public address, the admin's login page, the admin API."""
    client = Client(REMOTE_ADDR="203.0.113.7")
    for path in ("/healthz", "/readyz", "/metrics", "/admin/login/", "/admin/", "/api/admin/consumers/",
                 "/api/schema/", "/api/docs/", "/no-such-page"):
        response = client.get(path)
        assert response.status_code < 500, (path, response.status_code)
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert_names_no_product(response.status_code, {k.lower(): v for k, v in response.items()}, body, path)


def test_a_key_holder_still_sees_the_gateway_headers(personas, demo_route):
    response = post("/v1/chat/completions", personas.alice_key)
    assert response.status_code == 200
    assert response.headers["x-tollgate-provider"] == "sandbox" and "x-tollgate-overhead-ms" in response.headers


@NO_PROBE_LIMITS
def test_unknown_and_revoked_keys_take_the_same_time(personas, demo_route):
    """The same lookup for both (a digest, one indexed query, then the negative cache): compare
    the distributions of fresh keys of each kind, interleaved, not one timing."""
    revoked = []
    for n in range(40):
        issued = key_issue(consumer=personas.alice, name=f"r{n}")
        key_revoke(key=issued.key)
        revoked.append(issued.plaintext)
    unknown = [f"tg-{n:043d}" for n in range(40)]
    times: dict[str, list[float]] = {"unknown": [], "revoked": []}
    for a, b in zip(unknown, revoked, strict=True):
        for kind, key in (("unknown", a), ("revoked", b)):
            started = time.perf_counter()
            assert post("/v1/chat/completions", key).status_code == 401
            times[kind].append(time.perf_counter() - started)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    print({kind: f"{m * 1000:.2f} ms" for kind, m in medians.items()})
    assert abs(medians["unknown"] - medians["revoked"]) < max(0.002, 0.25 * min(medians.values()))


@override_settings(TOLLGATE_PROBE_SLOW_AFTER=2, TOLLGATE_PROBE_SLOW_SECONDS=0.15, TOLLGATE_PROBE_BLOCK_AFTER=5,
                   TOLLGATE_PROBE_BLOCK_SECONDS=60)
def test_repeated_bad_keys_from_one_address_are_slowed_then_blocked(personas, demo_route):
    durations, statuses = [], []
    for n in range(7):
        path = "/v1/messages" if n == 6 else "/v1/chat/completions"
        started = time.perf_counter()
        response = post(path, f"tg-guess-{n}")
        durations.append(time.perf_counter() - started)
        statuses.append(response.status_code)
    assert statuses == [401, 401, 401, 401, 429, 429, 429]
    assert max(durations[:2]) < 0.15 <= durations[2] and durations[3] >= 0.3  # slowed, more each time
    blocked = post("/v1/chat/completions", "tg-guess-again")
    assert blocked.json()["error"]["code"] == "too_many_failed_attempts"
    assert blocked.headers["retry-after"] == "60"
    anthropic = post("/v1/messages", "tg-guess-again")
    assert anthropic.json() == {"type": "error", "error": {"type": "rate_limit_error",
                                                          "message": anthropic.json()["error"]["message"]}}
    # Another address is not blocked.
    assert _failed_auth("10.9.9.9") == (False, 1)


@NO_PROBE_LIMITS
def test_every_failed_attempt_is_an_audit_event(personas, demo_route):
    attempts = [None, "tg-unknown-key", personas.revoked_key, "x" * 500]
    request_ids = [post("/v1/chat/completions", key).headers["x-request-id"] for key in attempts]
    # By request id: end-to-end servers of other tests leave their own events in the database.
    events = list(AuditEvent.objects.filter(request_id__in=request_ids, status=401).order_by("seq"))
    assert len(events) == len(attempts)
    assert {e.error_class for e in events} == {"missing_api_key", "invalid_api_key"}
    assert all(e.client_ip == "127.0.0.1" for e in events)


class Collector:
    """A local alert webhook: records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(orjson.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    yield server
    server.close()


def test_a_key_trying_many_models_raises_one_security_alert(personas, demo_route, collector, caplog):
    with override_settings(TOLLGATE_SECURITY_ALERT_WEBHOOK=collector.url, TOLLGATE_PROBE_MODEL_ALERT_AFTER=5):
        for model in ["gpt-4o", "gpt-4o", "claude-3-opus", "o1", "gemini-pro", "llama-70b", "mistral", "demo"]:
            post("/v1/chat/completions", personas.alice_key, model)
    key_alerts = [a for a in collector.received if "key" in a]
    assert len(key_alerts) == 1, collector.received
    alert = key_alerts[0]
    assert alert["alert"] == "model_probing" and alert["distinct_models"] == 5
    assert alert["key"] == personas.alice_key[:len(alert["key"])] and len(alert["key"]) < 20
    assert any(r.name == "tollgate.security" and "model_probing" in r.getMessage() for r in caplog.records)
    assert personas.alice_key not in str(collector.received)


@override_settings(TOLLGATE_PROBE_SLOW_AFTER=10_000, TOLLGATE_PROBE_BLOCK_AFTER=10_000,
                   TOLLGATE_PROBE_MODEL_ALERT_AFTER=5)
def test_an_address_sweeping_model_names_without_a_key_raises_an_alert(personas, demo_route, collector):
    with override_settings(TOLLGATE_SECURITY_ALERT_WEBHOOK=collector.url):
        for n in range(8):
            post("/v1/chat/completions", None, f"model-{n}")
    assert [a["address"] for a in collector.received] == ["127.0.0.1"]
