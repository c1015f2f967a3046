"""Hostile input costs nobody else, on the real server (issue #15; docs/reliability.md, Hostile input,
Probing, Upstream errors, Circuit breaker).

The production start (gunicorn, 2 uvicorn workers) with a 1 MiB body limit, a 2 s body read
timeout, 127.0.0.1 as a trusted proxy (so tests can send IPv6 clients in X-Forwarded-For, and
each test counts failures for addresses of its own), and the sandbox provider, whose runtime
knobs make it fail on demand. Raw sockets where it matters what was sent when.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import pytest
import redis

from tests.faults.conftest import running_gateway
from tests.faults.seed import PREFIX, seed
from tests.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

LIMIT = 1024 * 1024  # TOLLGATE_MAX_BODY_BYTES of this server
READ_TIMEOUT = 2  # TOLLGATE_BODY_READ_TIMEOUT_SECONDS of this server
BLOCK_AFTER = 5  # TOLLGATE_PROBE_BLOCK_AFTER of this server
HELLO = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def gateway(server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    """The server on the module's own database (server_database): its committed rows go with it."""
    sandbox_port = free_port()
    with django_db_blocker.unblock():
        seeded = seed(sandbox_port)
        ids = _seed_routes(sandbox_port)
    with running_gateway(sandbox_port=sandbox_port, database_url=server_database,
                         redis_url=os.environ.get("REDIS_URL"),
                         TOLLGATE_MAX_BODY_BYTES=str(LIMIT), TOLLGATE_BODY_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
                         TOLLGATE_TRUSTED_PROXIES="127.0.0.1", TOLLGATE_PROBE_SLOW_AFTER="1000",
                         TOLLGATE_PROBE_BLOCK_AFTER=str(BLOCK_AFTER), TOLLGATE_PROBE_BLOCK_SECONDS="60",
                         TOLLGATE_BREAKER_FAILURES="3", TOLLGATE_BREAKER_COOLDOWN_SECONDS="30",
                         TOLLGATE_BREAKER_RECHECK_SECONDS="0") as running:
        running.key = seeded.key
        running.deployments = ids
        yield running


def _seed_routes(sandbox_port: int) -> dict[str, int]:
    """Single-deployment routes of their own (each its own breaker) on the sandbox."""
    from proxy.models import Deployment, ModelRoute, Provider

    ids = {}
    # The upstream-error tests get routes of their own too: a provider's 429 (with its Retry-After)
    # holds that deployment's breaker, which must not reach the tests that use the demo route.
    for name, headers in (("blip", {}), ("held", {}), ("slowpoke", {"x-sandbox-latency-ms": "1500"}),
                          ("e401", {}), ("e429", {})):
        provider = Provider.objects.create(name=f"{PREFIX}{name}", kind="openai",
                                           base_url=f"http://127.0.0.1:{sandbox_port}/v1",
                                           api_key_env="TOLLGATE_PROVIDER_FAULTS_UPSTREAM_KEY", extra_headers=headers)
        route = ModelRoute.objects.create(model=f"{PREFIX}{name}")
        ids[name] = Deployment.objects.create(route=route, provider=provider, upstream_model="up").pk
    return ids


@pytest.fixture
def sandbox(gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.sandbox_url, timeout=10) as client:
        client.post("/_sandbox/reset")
        yield client
        client.post("/_sandbox/reset")


def chat(gateway, model: str, *, timeout: float = 15, **headers: str) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": model, "messages": HELLO},
                      headers={"authorization": f"Bearer {gateway.key}", **headers}, timeout=timeout)


def breaker_keys(gateway, deployment_id: int) -> list[bytes]:
    """The keys that make up a deployment's breaker state (its last error, kept for the admin, aside)."""
    live = redis.Redis.from_url(os.environ["REDIS_URL"])
    try:
        found = live.keys(f"{gateway.env['TOLLGATE_CACHE_PREFIX']}:*:breaker:{deployment_id}:*")
    finally:
        live.close()
    return sorted(k for k in found if k.rsplit(b":", 1)[1] in (b"open_until", b"fails", b"trial", b"held"))


# --- Raw HTTP -------------------------------------------------------------------------------


def open_request(gateway, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=15)
    sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
    return sock


def read_response(sock: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers, body) of one response; skips a 100 Continue."""
    data = b""

    def more() -> None:
        nonlocal data
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed in the middle of a response: {data!r}")
        data += chunk

    while True:
        while b"\r\n\r\n" not in data:
            more()
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        if " 100 " not in lines[0]:
            break
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        while not data.endswith(b"0\r\n\r\n"):
            more()
        body, rest = b"", data
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if int(size, 16) == 0:
                return lines[0], headers, body
            body, rest = body + rest[:int(size, 16)], rest[int(size, 16) + 2:]
    length = int(headers.get("content-length", "0"))
    while len(data) < length:
        more()
    return lines[0], headers, data[:length]


def closed_by_server(sock: socket.socket, within: float = 5.0) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass  # closed with our unread bytes still in its buffer: a reset
    except TimeoutError:
        return False
    return True


class ChunkedWriter(threading.Thread):
    """Sends a chunked body of 64 KiB chunks (up to `cap` bytes, or a byte every `interval` s) until stopped."""

    def __init__(self, sock: socket.socket, *, cap: int, chunk: int = 65536, interval: float = 0.0,
                 chunked: bool = True) -> None:
        super().__init__(daemon=True)
        self.sock, self.cap, self.chunk, self.interval, self.chunked = sock, cap, chunk, interval, chunked
        self.sent = 0
        self.stop = threading.Event()
        self.failed: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.sent < self.cap:
                data = b"x" * self.chunk
                self.sock.sendall(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)
                self.sent += len(data)
                if self.interval:
                    time.sleep(self.interval)
        except OSError as exc:
            self.failed = exc  # the server closed the connection: what a refused body looks like


# --- Bodies: limits while reading, the key before the body -------------------------------------


def test_a_body_twice_the_limit_is_refused_before_the_rest_is_sent(gateway):
    sock = open_request(gateway, f"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer {gateway.key}\n"
                                 f"Content-Type: application/json\nContent-Length: {2 * LIMIT}\n")
    sock.sendall(b"x" * 65536)  # the first chunk; the other 1.9 MiB are never sent
    status, headers, body = read_response(sock)
    assert status.startswith("HTTP/1.1 413 ")
    assert headers["connection"] == "close" and b"invalid_request_error" in body
    assert closed_by_server(sock)
    sock.close()


def test_an_endless_chunked_body_is_a_413_after_the_limit(gateway):
    sock = open_request(gateway, f"POST /v1/messages HTTP/1.1\nHost: x\nx-api-key: {gateway.key}\n"
                                 "anthropic-version: 2023-06-01\nTransfer-Encoding: chunked\n")
    writer = ChunkedWriter(sock, cap=200 * LIMIT)
    writer.start()
    status, headers, body = read_response(sock)
    assert headers["connection"] == "close"
    sent_when_refused = writer.sent
    writer.join(timeout=15)
    assert status.startswith("HTTP/1.1 413") and b'"type":"error"' in body  # Anthropic's shape on /v1/messages
    assert not writer.is_alive() and writer.failed is not None, "the server closed the connection"
    print(f"413 after {sent_when_refused / LIMIT:.1f} MiB sent (limit 1 MiB; the rest sits in socket buffers)")
    assert writer.sent < 50 * LIMIT
    sock.close()


@pytest.mark.parametrize("auth", ["", "Authorization: Bearer tg-unknown-0000000000000000000000000000\n"])
def test_a_body_without_a_valid_key_is_never_read(gateway, auth):
    # Expect: 100-continue: uvicorn sends "100 Continue" only when the application asks for the body,
    # so a 401 without it, with not a byte of the body sent, shows the body was never asked for.
    sock = open_request(gateway, f"POST /v1/chat/completions HTTP/1.1\nHost: x\n{auth}Content-Type: application/json\n"
                                 f"Content-Length: {2 * LIMIT}\nExpect: 100-continue\nX-Forwarded-For: 198.51.100.20\n")
    sock.settimeout(10)
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 401 "), first[:100]
    assert b"connection: close" in first.lower()
    sock.close()
    # With a valid key the body is asked for.
    sock = open_request(gateway, f"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer {gateway.key}\n"
                                 "Content-Type: application/json\nContent-Length: 2\nExpect: 100-continue\n")
    sock.settimeout(10)
    assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
    sock.close()


def test_a_slowloris_body_gets_a_408_within_the_timeout(gateway):
    sock = open_request(gateway, f"POST /v1/chat/completions HTTP/1.1\nHost: x\nAuthorization: Bearer {gateway.key}\n"
                                 "Content-Type: application/json\nContent-Length: 100000\n")
    started = time.monotonic()
    writer = ChunkedWriter(sock, cap=100_000, chunk=1, interval=0.2, chunked=False)
    writer.start()
    status, headers, body = read_response(sock)
    elapsed = time.monotonic() - started
    writer.stop.set()
    assert status.startswith("HTTP/1.1 408") and headers["connection"] == "close"
    assert b"request_body_timeout" in body
    assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 3, elapsed
    assert closed_by_server(sock)
    sock.close()
    assert chat(gateway, f"{PREFIX}demo").status_code == 200


# --- Probing -------------------------------------------------------------------------------


def test_bad_keys_on_the_model_list_are_throttled(gateway):
    statuses = [httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer tg-guess-{n}",
                                                               "x-forwarded-for": "198.51.100.30"}).status_code
                for n in range(BLOCK_AFTER + 1)]
    assert statuses == [401] * (BLOCK_AFTER - 1) + [429, 429]
    # Another address is not blocked; a valid key from the blocked one is still served.
    assert httpx.get(f"{gateway.url}/v1/models", headers={"authorization": "Bearer tg-guess",
                                                          "x-forwarded-for": "198.51.100.31"}).status_code == 401
    assert httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {gateway.key}",
                                                          "x-forwarded-for": "198.51.100.30"}).status_code == 200


def test_an_unauthenticated_get_on_chat_completions_is_the_401_of_an_unknown_path(gateway):
    headers = {"x-forwarded-for": "198.51.100.40"}
    wrong_method = httpx.get(f"{gateway.url}/v1/chat/completions", headers=headers)
    unknown = httpx.get(f"{gateway.url}/v1/no-such-endpoint", headers=headers)
    assert wrong_method.status_code == unknown.status_code == 401
    assert wrong_method.content == unknown.content


def test_two_ipv6_addresses_in_one_64_share_a_counter(gateway):
    statuses = [httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "x", "messages": HELLO},
                           headers={"authorization": f"Bearer tg-guess-{n}",
                                    "x-forwarded-for": f"2001:db8:77:1:{n:x}::{n + 1:x}"}).status_code
                for n in range(BLOCK_AFTER + 1)]
    assert statuses == [401] * (BLOCK_AFTER - 1) + [429, 429]
    neighbour = httpx.post(f"{gateway.url}/v1/chat/completions", json={"model": "x", "messages": HELLO},
                           headers={"authorization": "Bearer tg-guess", "x-forwarded-for": "2001:db8:77:2::1"})
    assert neighbour.status_code == 401, "the next /64 is someone else"


# --- Upstream errors -----------------------------------------------------------------------


def test_an_upstream_401_is_a_502_without_the_providers_text(gateway, sandbox):
    sandbox.post("/_sandbox/config", json={"fail_status": 401, "fail_count": 1, "fail_realistic": 1})
    response = chat(gateway, f"{PREFIX}e401")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_authentication_failed"
    assert b"sk-proj" not in response.content and b"Incorrect API key" not in response.content


def test_an_upstream_rate_limit_keeps_its_type_and_code_without_the_organisation(gateway, sandbox):
    sandbox.post("/_sandbox/config", json={"fail_status": 429, "fail_count": 1, "fail_realistic": 1})
    response = chat(gateway, f"{PREFIX}e429")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert b"org-Sb4XyZ12abCD" not in response.content and b"org-[redacted]" in response.content


# --- Circuit breaker -----------------------------------------------------------------------


def test_a_blip_does_not_lock_the_route_out(gateway, sandbox):
    sandbox.post("/_sandbox/config", json={"fail_status": 500, "fail_count": 3})
    assert [chat(gateway, f"{PREFIX}blip").status_code for _ in range(3)] == [500, 500, 500]
    assert any(key.endswith(b":open_until") for key in breaker_keys(gateway, gateway.deployments["blip"]))
    # The breaker is open, the provider has recovered: the very next request is served.
    recovered = chat(gateway, f"{PREFIX}blip")
    assert recovered.status_code == 200, recovered.content
    assert not breaker_keys(gateway, gateway.deployments["blip"]), "the trial closed it"


def test_a_providers_retry_after_is_respected_until_then(gateway, sandbox):
    sandbox.post("/_sandbox/config", json={"fail_status": 429, "fail_count": 1, "fail_retry_after": 5})
    limited = chat(gateway, f"{PREFIX}held")
    started = time.monotonic()
    assert (limited.status_code, limited.headers["retry-after"]) == (429, "5")
    waiting = chat(gateway, f"{PREFIX}held")
    assert waiting.status_code == 503 and waiting.json()["error"]["code"] == "no_healthy_deployment"
    assert 1 <= int(waiting.headers["retry-after"]) <= 5
    time.sleep(max(0.0, 5.3 - (time.monotonic() - started)))
    assert chat(gateway, f"{PREFIX}held").status_code == 200


def test_clients_that_time_out_count_against_no_breaker(gateway):
    for _ in range(4):  # the breaker opens after 3 failures
        with pytest.raises(httpx.ReadTimeout):
            chat(gateway, f"{PREFIX}slowpoke", timeout=0.3)
    time.sleep(0.5)
    assert not breaker_keys(gateway, gateway.deployments["slowpoke"])
    patient = chat(gateway, f"{PREFIX}slowpoke", timeout=15)
    assert patient.status_code == 200 and patient.headers["x-tollgate-attempts"] == "1"
