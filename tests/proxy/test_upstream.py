"""proxy.upstream: the outbound HTTP seam of the request path, against real local servers."""
from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from proxy import upstream
from proxy.upstream import Timeouts, UpstreamError, UpstreamTimeout
from tests.servers import free_port

FAST = Timeouts(read=2.0, connect=2.0)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen_cookies: list[str | None] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        _Handler.seen_cookies.append(self.headers.get("cookie"))
        if self.path == "/slow":
            time.sleep(1.5)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("set-cookie", "session=provider-secret; Path=/")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Handler.seen_cookies = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_providers_cookie_is_never_sent_back(provider):
    # One session serves every consumer of a worker: a cookie kept from one answer
    # would travel with the next consumer's request.
    async def twice() -> list[bytes]:
        bodies = []
        for _ in range(2):
            response, body = await upstream.post(f"{provider}/chat", content=b"{}", headers={}, timeouts=FAST)
            assert response.status_code == 200
            assert response.headers["Content-Type"] == "application/json"  # case-insensitive
            bodies.append(body)
        return bodies

    assert asyncio.run(twice()) == [b'{"ok": true}'] * 2
    assert _Handler.seen_cookies == [None, None]


def test_a_silent_provider_is_a_timeout(provider):
    async def slow() -> None:
        await upstream.post(f"{provider}/slow", content=b"{}", headers={}, timeouts=Timeouts(read=0.3, connect=1))

    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        asyncio.run(slow())
    assert time.monotonic() - started < 1.4


def test_a_refused_connection_is_an_upstream_error():
    async def refused() -> None:
        await upstream.post(f"http://127.0.0.1:{free_port()}/chat", content=b"{}", headers={}, timeouts=FAST)

    with pytest.raises(UpstreamError) as caught:
        asyncio.run(refused())
    assert not isinstance(caught.value, UpstreamTimeout)


def test_the_session_is_closed_with_its_event_loop(provider):
    # Tests and management commands run many short loops: each loop's session must
    # close when the loop ends, not linger (with the loop) until the process exits.
    sessions = []

    async def call() -> None:
        await upstream.post(f"{provider}/chat", content=b"{}", headers={}, timeouts=FAST)
        sessions.append(upstream._sessions[asyncio.get_running_loop()][0])

    asyncio.run(call())
    asyncio.run(call())
    assert len(sessions) == 2 and sessions[0] is not sessions[1]
    assert all(session.closed for session in sessions)
    assert not any(session in [s for s, _ in upstream._sessions.values()] for session in sessions)


def test_waiting_for_a_free_pooled_connection_is_not_a_connect_timeout(provider, settings):
    # A full pool (a worker relaying thousands of long streams) is this worker's state, not
    # the provider's: a request waits for a connection up to the read timeout, and the short
    # connect timeout applies to the TCP connect alone.
    settings.TOLLGATE_UPSTREAM_MAX_CONNECTIONS = 1

    async def two_at_once() -> list[int]:
        timeouts = Timeouts(read=5.0, connect=0.3)
        answers = await asyncio.gather(*(upstream.post(f"{provider}/slow", content=b"{}", headers={},
                                                       timeouts=timeouts) for _ in range(2)))
        return [response.status_code for response, _ in answers]

    assert asyncio.run(two_at_once()) == [200, 200]


class _ClosingAfterOneAnswer:
    """A provider that answers the first request of each connection, keeps it open, and closes it without
    an answer when a second request comes on it: an idle connection the provider closed as it was reused."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.connections = 0
        self.answered = 0
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_request(conn: socket.socket) -> bool:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return False
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            body += conn.recv(65536)
        return True

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            if not self._read_request(conn):
                return
            self.answered += 1
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
            self._read_request(conn)  # the second request on this connection: closed unanswered

    def close(self) -> None:
        self.sock.close()


def test_a_request_on_a_connection_the_provider_closed_is_sent_again_on_a_new_one():
    provider = _ClosingAfterOneAnswer()

    async def twice() -> list[int]:
        statuses = []
        for _ in range(2):
            response, _ = await upstream.post(f"{provider.url}/chat", content=b"{}", headers={}, timeouts=FAST)
            statuses.append(response.status_code)
        return statuses

    try:
        # The second request goes out on the pooled connection, which the provider closes unanswered.
        assert asyncio.run(twice()) == [200, 200]
        assert provider.connections == 2 and provider.answered == 2
    finally:
        provider.close()
