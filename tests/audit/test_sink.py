"""The HTTP sink against a local collector that is down, then up: every event arrives exactly once."""
from __future__ import annotations

import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
from django.test import override_settings

from audit.models import AuditSinkCursor
from audit.sinks import sink_flush
from tests.audit.conftest import add_events
from tests.servers import free_port

pytestmark = pytest.mark.django_db


class Collector:
    """A tiny http-logger collector on 127.0.0.1; `status` is what it answers."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[dict] = []
        self.batches: list[str] = []
        self.status = 200
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if collector.status == 200:
                    collector.received.extend(orjson.loads(body))
                    collector.batches.append(self.headers["x-tollgate-batch"])
                self.send_response(collector.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def collector():
    port = free_port()
    c = Collector(port)
    with override_settings(TOLLGATE_AUDIT_SINK_URL=f"http://127.0.0.1:{port}/logs", TOLLGATE_AUDIT_SINK_BATCH_SIZE=40,
                           TOLLGATE_AUDIT_SINK_RETRIES=2, TOLLGATE_AUDIT_SINK_BACKOFF_SECONDS=0.5,
                           TOLLGATE_AUDIT_SINK_TIMEOUT_SECONDS=2):
        yield c
    c.stop()


def test_events_wait_while_the_collector_is_down_and_arrive_exactly_once(collector):
    naps: list[float] = []
    add_events(100)
    assert sink_flush(sleep=naps.append) == 0  # nobody listening
    assert naps == [0.5, 1.0], "retries back off exponentially"
    assert "unreachable" in AuditSinkCursor.objects.get().last_error
    collector.start()
    collector.status = 503
    assert sink_flush(sleep=naps.append) == 0  # up but failing
    collector.status = 200
    add_events(30)  # more events arrive meanwhile
    assert sink_flush(sleep=naps.append) == 130
    assert sink_flush(sleep=naps.append) == 0  # nothing left, nothing sent twice
    seqs = [event["seq"] for event in collector.received]
    assert sorted(seqs) == list(range(1, 131))
    assert Counter(seqs).most_common(1)[0][1] == 1
    assert collector.batches[:2] == ["1-40", "41-80"]
    assert collector.received[0]["request_id"] and "cost_usd" in collector.received[0]
    cursor = AuditSinkCursor.objects.get()
    assert (cursor.last_seq, cursor.delivered, cursor.last_error) == (130, 130, "")


def test_a_permanent_refusal_is_not_retried(collector):
    collector.start()
    collector.status = 400
    naps: list[float] = []
    add_events(3)
    assert sink_flush(sleep=naps.append) == 0
    assert naps == []
    assert AuditSinkCursor.objects.get().last_seq == 0


def test_only_one_flusher_runs_at_a_time(collector):
    from django.core.cache import cache

    collector.start()
    add_events(3)
    cache.add("audit:sink:http:lock", "someone-else", timeout=60)
    assert sink_flush() == 0
    cache.delete("audit:sink:http:lock")
    assert sink_flush() == 3
