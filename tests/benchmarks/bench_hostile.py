"""Benchmark: does hostile traffic cost anybody else? /healthz latency, quiet and under a flood.

    .venv/bin/python tests/benchmarks/bench_hostile.py [--seconds 10]

Starts the gateway on this machine only (127.0.0.1) as tests/benchmarks/bench_gateway.py does
(gunicorn, 2 uvicorn workers, PostgreSQL and Redis, a database of its own), then measures the
p50/p95/p99 of GET /healthz from one client: first quiet, then while 20 concurrent anonymous
clients send `GET /v1/models/` + "a" * 16000 + "@" back to back (the long-path probe of issue
#15: no key, a model name built to make a backtracking pattern quadratic). Prints the numbers
and writes var/benchmarks/hostile.json. The load phases last --seconds each (default 10, so
at most about 30 s with start-up), and everything stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.bench_gateway import percentile, sh, tree_cpu_seconds  # noqa: E402
from tests.servers import free_port, gateway_command, wait_until_up  # noqa: E402

FLOODERS = 20
PROBE_PATH = "/v1/models/" + "a" * 16000 + "@"


async def sample_health(url: str, seconds: float) -> list[float]:
    """Milliseconds of each GET /healthz, one after another, for `seconds`."""
    samples: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = await client.get(f"{url}/healthz")
            samples.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise SystemExit(f"/healthz answered {response.status_code}")
            await asyncio.sleep(0.01)  # about 80 samples a second: enough for a p95, little load of its own
    return samples


async def flood(port: int, seconds: float, statuses: dict[int, int]) -> None:
    """One anonymous client sending the long-path probe back to back on one keep-alive connection
    for `seconds`. Raw HTTP/1.1 on asyncio streams: an HTTP client library would spend more of the
    machine's two cores than the gateway does on each probe, and measure itself."""
    request = f"GET {PROBE_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    deadline = time.monotonic() + seconds
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            if b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
            else:  # chunked: the gateway's JSON answers are small, and end with the empty chunk
                await reader.readuntil(b"0\r\n\r\n")
            statuses[status] = statuses.get(status, 0) + 1
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, asyncio.IncompleteReadError):
        statuses[-2] = statuses.get(-2, 0) + 1
    finally:
        writer.close()


async def under_flood(url: str, port: int, seconds: float) -> tuple[list[float], dict[int, int]]:
    statuses: dict[int, int] = {}
    floods = [asyncio.create_task(flood(port, seconds, statuses)) for _ in range(FLOODERS)]
    await asyncio.sleep(0.5)  # the flood is under way before the first sample
    samples = await sample_health(url, seconds - 1.0)
    await asyncio.gather(*floods)
    return samples, statuses


def summary(samples: list[float]) -> dict:
    return {"n": len(samples), "p50_ms": percentile(samples, 0.5), "p95_ms": percentile(samples, 0.95),
            "p99_ms": percentile(samples, 0.99), "max_ms": max(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each phase (quiet, flood)")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_bench_hostile")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seconds = min(args.seconds, 12.0)  # bounded: two phases and start-up stay near 30 s

    import psycopg
    import redis

    db_name = args.database_url.rsplit("/", 1)[1]
    admin_url = args.database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db_name}"')
    redis.Redis.from_url(args.redis_url).flushdb()

    port = free_port()
    env = {**os.environ, "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url,
           "DJANGO_SECRET_KEY": "benchmark-only-secret", "TOLLGATE_LOG_LEVEL": "warning",
           "TOLLGATE_CELERY_QUEUE": "tollgate-bench-hostile"}
    env.pop("DJANGO_DEBUG", None)
    sh(sys.executable, "manage.py", "migrate", "--noinput", env=env)
    logs = ROOT / "var" / "benchmarks"
    logs.mkdir(parents=True, exist_ok=True)
    # The production start (the Procfile's web command), as the e2e tests and bench_gateway.py run it.
    gateway = subprocess.Popen(gateway_command(port, args.workers), cwd=ROOT, env=env,
                               stdout=open(logs / "hostile-gateway.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    report: dict = {"machine": {"cores": os.cpu_count()}, "workers": args.workers, "seconds": seconds,
                    "flooders": FLOODERS, "probe_path_chars": len(PROBE_PATH)}
    try:
        wait_until_up(f"{url}/healthz", process=gateway)
        asyncio.run(sample_health(url, 1.0))  # warm up: connections, workers' first requests
        report["quiet"] = summary(asyncio.run(sample_health(url, seconds)))
        cpu_before = tree_cpu_seconds(gateway.pid)
        samples, statuses = asyncio.run(under_flood(url, port, seconds))
        report["flood"] = summary(samples)
        report["flood"]["gateway_cpu_s"] = tree_cpu_seconds(gateway.pid) - cpu_before
        report["flood"]["probe_answers"] = {str(k): v for k, v in sorted(statuses.items())}
        report["flood"]["probe_rps"] = sum(statuses.values()) / seconds
    finally:
        gateway.terminate()
        try:
            gateway.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gateway.kill()

    (logs / "hostile.json").write_text(json.dumps(report, indent=2))
    print(f"\n/healthz under hostile load: {args.workers} workers, {report['machine']['cores']} cores, "
          f"{seconds:.0f} s per phase, {FLOODERS} anonymous clients sending GET /v1/models/<16 000 chars>@\n")
    print(f"{'':<8}{'samples':>9}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}")
    for phase in ("quiet", "flood"):
        r = report[phase]
        print(f"{phase:<8}{r['n']:>9}{r['p50_ms']:>8.2f}ms{r['p95_ms']:>8.2f}ms{r['p99_ms']:>8.2f}ms"
              f"{r['max_ms']:>8.1f}ms")
    f = report["flood"]
    print(f"\nprobes answered: {f['probe_answers']} ({f['probe_rps']:.0f}/s; -2: a connection error); "
          f"gateway CPU during the flood: {f['gateway_cpu_s']:.1f} s")


if __name__ == "__main__":
    main()
