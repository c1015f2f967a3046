"""CPU per request of the gateway's own code, in one process, without a server or a load generator.

    python tests/benchmarks/bench_inprocess.py [--requests N] [--concurrency C] [--rounds R]

The end-to-end benchmark (bench_gateway.py) measures the CPU of the gateway's process tree
while wrk runs on the same two cores as the sandbox, PostgreSQL and Redis: on a busy machine
its figures move by tens of percent. Here the ASGI application (gateway_site.asgi.application,
the same object gunicorn serves) is called directly, C requests at a time, by a fake server
that hands it the request and collects the answer; the sandbox provider, PostgreSQL and
Redis are real (started as in bench_gateway.py). The figure is this process's CPU time
(time.process_time: the event loop and the audit writer's thread) per request; uvicorn's
HTTP parsing and the client's socket writes are not in it. The best of R rounds is kept:
interference from other work on the machine only ever adds CPU time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_gateway import BODY, gateway_under_test  # noqa: E402
from tests.servers import free_port  # noqa: E402


async def _one(application, key: str) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(BODY)).encode()), (b"authorization", f"Bearer {key}".encode()),
                    (b"user-agent", b"bench-inprocess")],
    }
    sent = False
    never = asyncio.Event()
    status = 0

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}
        await never.wait()  # the client stays until the answer is complete
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await application(scope, receive, send)
    return status


async def _round(application, key: str, requests: int, concurrency: int) -> tuple[float, float, int]:
    queue = iter(range(requests))
    failures = 0

    async def client() -> None:
        nonlocal failures
        for _ in queue:
            if await _one(application, key) != 200:
                failures += 1

    from proxy import tracing

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    if tracing.ENABLED:
        await asyncio.to_thread(tracing.flush, 30_000)  # the round's spans encoded and sent: counted in it
    return time.process_time() - cpu, time.perf_counter() - wall, failures


# A process that answers every OTLP/HTTP export with 200 and keeps nothing (its CPU is not counted).
SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Sink(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
server.serve_forever()
"""


@contextmanager
def otlp_sink(wanted: bool) -> Iterator[str | None]:
    if not wanted:
        yield None
        return
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    try:
        time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/2")
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true",
                        help="with OpenTelemetry tracing on, exporting to a local OTLP/HTTP sink (proxy/tracing.py)")
    args = parser.parse_args()
    with gateway_under_test(args) as under_test, otlp_sink(args.trace) as sink:
        if sink:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink
        os.environ.update({"DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url,
                           "DJANGO_SECRET_KEY": "benchmark-only-secret", "TOLLGATE_LOG_LEVEL": "warning",
                           "TOLLGATE_CELERY_QUEUE": "tollgate-bench"})
        os.environ.pop("DJANGO_DEBUG", None)
        os.environ.pop("TOLLGATE_STAGE_TIMING", None)
        from gateway_site.asgi import application

        async def run() -> list[tuple[float, float, int]]:
            await _round(application, under_test.key, 200, args.concurrency)  # warm up
            rounds = [await _round(application, under_test.key, args.requests, args.concurrency)
                      for _ in range(args.rounds)]
            from proxy import tracing

            await asyncio.to_thread(tracing.shutdown)  # while the sink still answers
            return rounds

        rounds = asyncio.run(run())
    per_request = [1000 * cpu / args.requests for cpu, _, _ in rounds]
    report = {"requests": args.requests, "concurrency": args.concurrency, "traced": args.trace,
              "cpu_ms_per_request": per_request, "best_cpu_ms_per_request": min(per_request),
              "failures": sum(f for _, _, f in rounds)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
