"""OpenTelemetry traces (proxy/tracing.py): the spans of a proxied request reach an OTLP/HTTP receiver
with the GenAI semantic conventions' attributes; without OTEL_EXPORTER_OTLP_ENDPOINT the SDK is
never imported."""
from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from budgets.models import ModelPrice
from tests.proxy.client import chat
from tests.servers import ROOT

HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}


class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector: keeps the protobuf bodies POSTed to /v1/traces."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path == "/v1/traces" and self.headers.get("Content-Type") == "application/x-protobuf":
            self.server.bodies.append(body)  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def otlp_receiver() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def tracing_on(otlp_receiver, monkeypatch) -> Iterator[ThreadingHTTPServer]:
    from proxy import tracing

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{otlp_receiver.server_address[1]}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "tollgate-test")
    monkeypatch.setattr(tracing, "ENABLED", True)
    tracing.shutdown()
    try:
        yield otlp_receiver
    finally:
        tracing.shutdown()


def _spans(bodies: list[bytes]) -> tuple[list[Any], set[str]]:
    """The spans in the receiver's requests, and the service names they came from."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans, services = [], set()
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for attribute in resource_spans.resource.attributes:
                if attribute.key == "service.name":
                    services.add(attribute.value.string_value)
            for scope_spans in resource_spans.scope_spans:
                spans.extend(scope_spans.spans)
    return spans, services


def _attributes(span: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}


@pytest.mark.django_db
def test_a_proxied_request_is_exported_as_spans_with_genai_attributes(personas, demo_route, tracing_on):
    from proxy import tracing

    ModelPrice.objects.create(model="sandbox-model", input_per_million=150_000, output_per_million=600_000)
    response = chat(personas.alice_key, HELLO)
    assert response.status_code == 200, response.content
    assert tracing.flush()
    spans, services = _spans(tracing_on.bodies)
    assert services == {"tollgate-test"}

    [root] = [s for s in spans if s.name == "chat demo"]
    attributes = _attributes(root)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "demo"
    assert attributes["gen_ai.response.model"] == "sandbox-model"
    assert attributes["gen_ai.provider.name"] == attributes["gen_ai.system"] == "tollgate.sandbox"
    usage = response.json()["usage"]
    assert attributes["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attributes["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    expected_cost = -(-(usage["prompt_tokens"] * 150_000 + usage["completion_tokens"] * 600_000) // 1_000_000)
    assert attributes["tollgate.cost_microusd"] == expected_cost
    assert attributes["tollgate.cost_usd"] == pytest.approx(expected_cost / 1_000_000)
    assert attributes["tollgate.request_id"] == response.headers["x-request-id"]
    assert attributes["http.response.status_code"] == 200
    assert "error.type" not in attributes

    children = {s.name: s for s in spans if s.parent_span_id == root.span_id}
    assert children.keys() == {"auth", "admission", "chat sandbox-model", "answer", "audit"}
    # The stages without a span of their own are the request span's attributes.
    assert {"parse", "route", "call", "settle"} <= {k.removeprefix("tollgate.stage_ms.") for k in attributes}
    assert all(s.trace_id == root.trace_id for s in spans)
    attempt = _attributes(children["chat sandbox-model"])
    assert attempt["gen_ai.request.model"] == "sandbox-model" and attempt["tollgate.provider"] == "sandbox"
    for child in children.values():
        assert root.start_time_unix_nano <= child.start_time_unix_nano <= child.end_time_unix_nano
        assert child.end_time_unix_nano <= root.end_time_unix_nano
    # The stages follow each other: admission before the upstream attempt, the audit write after it.
    assert children["admission"].end_time_unix_nano <= children["chat sandbox-model"].start_time_unix_nano
    assert children["chat sandbox-model"].end_time_unix_nano <= children["audit"].start_time_unix_nano
    # Never a key or a body in a span.
    exported = b"".join(tracing_on.bodies)
    assert personas.alice_key.encode() not in exported and b"hello" not in exported


@pytest.mark.django_db
def test_a_failed_attempt_is_a_span_with_its_error(personas, demo_route, sandbox_provider, tracing_on):
    from proxy import tracing

    sandbox_provider.extra_headers = {"x-sandbox-fail-status": "500"}
    sandbox_provider.save()
    response = chat(personas.alice_key, HELLO)
    assert response.status_code >= 500
    assert tracing.flush()
    spans, _ = _spans(tracing_on.bodies)
    [attempt] = [s for s in spans if s.name == "chat sandbox-model"]
    assert _attributes(attempt)["error.type"]
    [root] = [s for s in spans if s.name == "chat demo"]
    assert _attributes(root)["error.type"] and _attributes(root)["http.response.status_code"] == response.status_code


def test_without_the_endpoint_the_sdk_is_never_imported():
    # A fresh process, as a worker starts: the application loaded and a request's context made and
    # exported. (redis-py imports opentelemetry's API, and the SDK's metrics, by itself when they are
    # installed: the tracing SDK and the exporter are the tracer's alone.)
    code = (
        "import os, sys\n"
        "for name in ('OTEL_EXPORTER_OTLP_ENDPOINT', 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT'):\n"
        "    os.environ.pop(name, None)\n"
        "import gateway_site.asgi\n"
        "from proxy import tracing\n"
        "from proxy.errors import Caller\n"
        "ctx = tracing.context(caller=Caller.OPENAI, endpoint='chat.completions')\n"
        "ctx.lap('auth'); tracing.export(ctx)\n"
        "tracer = ('opentelemetry.sdk.trace', 'opentelemetry.exporter')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(tracer))\n"
        "print(tracing.ENABLED, type(ctx).__name__, loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "RequestContext", "[]"]
