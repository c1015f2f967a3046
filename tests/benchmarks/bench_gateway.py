"""Benchmark: the sandbox provider directly and through the gateway, side by side.

    bash tests/benchmarks/run.sh            # installs wrk if missing, then runs this

Starts, on this machine only (127.0.0.1): the sandbox provider, and the gateway
under gunicorn with 2 uvicorn workers on PostgreSQL and Redis, with auth, rate
limits, token budgets, cost accounting and the audit log all on. Then measures
non-stream throughput and latency at concurrency 1, 16 and 64 (wrk), 1,000
concurrent streams of 20 chunks 50 ms apart, peak memory and CPU per request of
the gateway's process tree, and 5,000 concurrent slow streams. Prints a table
and writes var/benchmarks/latest.json. Every load is bounded in time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.benchmarks.streamclient import many_streams  # noqa: E402
from tests.servers import free_port, gateway_command, wait_until_up  # noqa: E402

BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say something short."}],
                   "max_tokens": 64}).encode()

CONFIG = """
providers:
  - {{name: sandbox, kind: sandbox, base_url: "http://127.0.0.1:{sandbox}/v1", timeout_seconds: 30}}
  - name: sandbox-stream
    kind: sandbox
    base_url: "http://127.0.0.1:{sandbox}/v1"
    timeout_seconds: 60
    extra_headers: {{x-sandbox-chunks: "20", x-sandbox-chunk-delay-ms: "50"}}
  - name: sandbox-slow
    kind: sandbox
    base_url: "http://127.0.0.1:{sandbox}/v1"
    timeout_seconds: 60
    extra_headers: {{x-sandbox-chunks: "20", x-sandbox-chunk-delay-ms: "250"}}
routes:
  - model: bench
    deployments: [{{provider: sandbox, model: gpt-4o-mini}}]
  - model: bench-stream
    deployments: [{{provider: sandbox-stream, model: gpt-4o-mini}}]
  - model: bench-slow
    deployments: [{{provider: sandbox-slow, model: gpt-4o-mini}}]
consumers:
  - name: bench
    description: benchmark consumer
    budgets:
      - {{metric: tokens, limit: 100000000000, period: day, timezone: UTC, mode: hard}}
      - {{metric: cost_usd, limit: 1000000, period: month}}
    rate_limits:
      - {{requests: 100000000, window_seconds: 60}}
      - {{tokens: 2000000000, window_seconds: 60}}
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""


def sh(*args: str, env: dict | None = None, check: bool = True) -> str:
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def tree_pids(root: int) -> list[int]:
    pids, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            pids.append(child)
            frontier.append(child)
    return pids


def tree_rss_mib(root: int) -> float:
    total = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def tree_cpu_seconds(root: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in tree_pids(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / ticks


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_mib(self.pid))
            time.sleep(0.05)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def wrk(url: str, concurrency: int, seconds: int, script: Path) -> dict:
    threads = 1 if concurrency == 1 else 2
    out = sh("wrk", f"-t{threads}", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", str(script), url)
    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def stage_profile(url: str, key: str, n: int = 400) -> dict:
    """Mean and p50 milliseconds per stage of the request path, from x-tollgate-stages, one client."""
    samples: dict[str, list[float]] = {}
    with httpx.Client(headers={"authorization": f"Bearer {key}", "content-type": "application/json"}) as client:
        for _ in range(n):
            response = client.post(url, content=BODY)
            for item in response.headers.get("x-tollgate-stages", "").split(";"):
                if "=" in item:
                    name, value = item.split("=")
                    samples.setdefault(name, []).append(float(value))
    return {name: {"mean_ms": statistics.fmean(values), "p50_ms": percentile(values, 0.5)}
            for name, values in samples.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def streams(port: int, path: str, model: str, key: str | None, n: int, extra_headers: dict, timeout: float) -> dict:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Stream please."}],
                       "stream": True, "max_tokens": 256}).encode()
    headers = dict(extra_headers)
    headers["Authorization"] = f"Bearer {key or 'sandbox'}"
    results, wall = asyncio.run(many_streams(n, "127.0.0.1", port, path, body, headers, time_limit=timeout))
    ttfts = [r.ttft * 1000 for r in results if r.ttft is not None]
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.error or str(r.status)] = errors.get(r.error or str(r.status), 0) + 1
    return {
        "streams": n,
        "completed": sum(r.ok for r in results),
        "ttft_p50_ms": percentile(ttfts, 0.5) if ttfts else None,
        "ttft_p99_ms": percentile(ttfts, 0.99) if ttfts else None,
        "wall_s": wall,
        "errors": errors,
    }


@contextmanager
def gateway_under_test(args: argparse.Namespace) -> Iterator[SimpleNamespace]:
    """A fresh database and Redis database, the benchmark's configuration and key, the sandbox and the
    gateway (the Procfile's web command) on free ports; both stopped afterwards."""
    import psycopg
    import redis

    db_name = args.database_url.rsplit("/", 1)[1]
    admin_url = args.database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db_name}"')
    redis.Redis.from_url(args.redis_url).flushdb()

    sandbox_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": args.database_url, "REDIS_URL": args.redis_url,
           "DJANGO_SECRET_KEY": "benchmark-only-secret", "TOLLGATE_LOG_LEVEL": "warning",
           "TOLLGATE_STAGE_TIMING": "1",
           "TOLLGATE_CELERY_QUEUE": "tollgate-bench"}
    env.pop("DJANGO_DEBUG", None)
    python = sys.executable
    sh(python, "manage.py", "migrate", "--noinput", env=env)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as config:
        config.write(CONFIG.format(sandbox=sandbox_port))
    sh(python, "manage.py", "gateway_apply", config.name, "--allow-credentials", env=env)
    key = sh(python, "manage.py", "issuekey", "bench", env=env).strip()

    logs = ROOT / "var" / "benchmarks"
    logs.mkdir(parents=True, exist_ok=True)
    sandbox = subprocess.Popen([python, "manage.py", "sandbox_provider", "--port", str(sandbox_port),
                                "--log-level", "warning"], cwd=ROOT, env=env,
                               stdout=open(logs / "sandbox.log", "wb"), stderr=subprocess.STDOUT)
    # The production start (the Procfile's web command), as the e2e tests run it.
    gateway = subprocess.Popen([*gateway_command(gateway_port, args.workers), "--backlog", "8192"],
                               cwd=ROOT, env=env, stdout=open(logs / "gateway.log", "wb"),
                               stderr=subprocess.STDOUT)
    try:
        wait_until_up(f"http://127.0.0.1:{sandbox_port}/_sandbox/health", process=sandbox)
        wait_until_up(f"http://127.0.0.1:{gateway_port}/healthz", process=gateway)
        check = httpx.post(f"http://127.0.0.1:{gateway_port}/v1/chat/completions", content=BODY,
                           headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        if check.status_code != 200:
            raise SystemExit(f"gateway answered {check.status_code}: {check.text}")
        yield SimpleNamespace(key=key, sandbox=sandbox, gateway=gateway, sandbox_port=sandbox_port,
                              gateway_port=gateway_port)
    finally:
        for process in (gateway, sandbox):
            process.terminate()
        for process in (gateway, sandbox):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/tollgate_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-slow", action="store_true", help="skip the 5,000 slow streams")
    parser.add_argument("--only", choices=("non-stream", "streams", "slow"), action="append",
                        help="run only these measures (repeatable); default: all")
    parser.add_argument("--slow-runs", type=int, default=1, help="how many times in a row to run the slow streams")
    parser.add_argument("--serve", type=int, metavar="SECONDS", default=0,
                        help="only start the sandbox and the gateway, print their addresses and the key, and keep "
                             "them up for SECONDS (for profiling: docs/performance.md)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), or run tests/benchmarks/run.sh")
    only = set(args.only or ("non-stream", "streams", "slow"))
    if args.skip_slow:
        only.discard("slow")
    # The servers inherit this limit: 5,000 streams need 5,000 descriptors in this client, the sandbox
    # and each gateway worker. A low soft limit (1,024 on many systems) made streams fail at random.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if "slow" in only and resource.getrlimit(resource.RLIMIT_NOFILE)[0] < 12000:
        print("warning: open files limited to", resource.getrlimit(resource.RLIMIT_NOFILE)[0],
              "- the 5,000 slow streams need about 6,000 per process", file=sys.stderr)

    report: dict = {"machine": {"cores": os.cpu_count(), "load_at_start": os.getloadavg()[0],
                                "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0]},
                    "workers": args.workers, "seconds": args.seconds}
    with gateway_under_test(args) as under_test:
        key, gateway = under_test.key, under_test.gateway
        sandbox_port, gateway_port = under_test.sandbox_port, under_test.gateway_port
        report["idle_rss_mib"] = tree_rss_mib(gateway.pid)
        if args.serve:
            workers = tree_pids(gateway.pid)[1:]
            print(json.dumps({"gateway": f"http://127.0.0.1:{gateway_port}",
                              "sandbox": f"http://127.0.0.1:{sandbox_port}", "key": key,
                              "master": gateway.pid, "workers": workers}), flush=True)
            time.sleep(args.serve)
            return

        if "non-stream" in only:
            report.update(non_stream_measures(args, key, sandbox_port, gateway_port, gateway.pid))
        if "streams" in only:
            report["streams_1000"] = {"direct": streams(sandbox_port, "/v1/chat/completions", "gpt-4o-mini",
                                                        None, 1000, {"x-sandbox-chunks": "20",
                                                                     "x-sandbox-chunk-delay-ms": "50"}, 60)}
            with PeakRss(gateway.pid) as peak:
                report["streams_1000"]["gateway"] = streams(gateway_port, "/v1/chat/completions", "bench-stream",
                                                            key, 1000, {}, 60)
            report["streams_1000"]["peak_rss_mib"] = peak.peak
        if "slow" in only:
            report["slow_streams_5000"] = []
            for _ in range(args.slow_runs):
                with PeakRss(gateway.pid) as peak:
                    run = streams(gateway_port, "/v1/chat/completions", "bench-slow", key, 5000, {}, 120)
                run["peak_rss_mib"] = peak.peak
                report["slow_streams_5000"].append(run)

    report["targets"] = targets(report)
    logs = ROOT / "var" / "benchmarks"
    (logs / "latest.json").write_text(json.dumps(report, indent=2))
    print_table(report)


def non_stream_measures(args: argparse.Namespace, key: str, sandbox_port: int, gateway_port: int,
                        gateway_pid: int) -> dict:
    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        direct_script = Path(tmp) / "direct.lua"
        direct_script.write_text(WRK_SCRIPT.format(body=json.dumps(BODY.decode()), key="sandbox"))
        gateway_script = Path(tmp) / "gateway.lua"
        gateway_script.write_text(WRK_SCRIPT.format(body=json.dumps(BODY.decode()), key=key))
        direct_url = f"http://127.0.0.1:{sandbox_port}/v1/chat/completions"
        gateway_url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
        wrk(gateway_url, 16, 2, gateway_script)  # warm up: connections, caches, pools
        report["stages"] = stage_profile(gateway_url, key)
        report["non_stream"] = {}
        for concurrency in (1, 16, 64):
            direct = wrk(direct_url, concurrency, args.seconds, direct_script)
            cpu_before = tree_cpu_seconds(gateway_pid)
            through = wrk(gateway_url, concurrency, args.seconds, gateway_script)
            cpu = tree_cpu_seconds(gateway_pid) - cpu_before
            through["cpu_ms_per_request"] = 1000 * cpu / max(1, through["requests"])
            report["non_stream"][concurrency] = {
                "direct": direct, "gateway": through,
                "rps_ratio": through["rps"] / direct["rps"],
                "added_p50_ms": through["p50_ms"] - direct["p50_ms"],
            }
    return report


# Issue #18's targets: (label, where the figure is, how it compares, the target, unit).
TARGETS = (
    ("CPU per request, 16 clients", ("non_stream", 16, "gateway", "cpu_ms_per_request"), "<=", 0.6, "ms"),
    ("added p50, 1 client", ("non_stream", 1, "added_p50_ms"), "<=", 2.0, "ms"),
    ("p99, 64 clients", ("non_stream", 64, "gateway", "p99_ms"), "<=", 100.0, "ms"),
    ("1,000 streams: added TTFT p50", ("streams_1000", "added_ttft_p50_ms"), "<=", 150.0, "ms"),
    ("1,000 streams: completed", ("streams_1000", "gateway", "completed"), ">=", 1000, ""),
    ("peak RSS, 1,000-stream test", ("streams_1000", "peak_rss_mib"), "<=", 400.0, "MiB"),
    ("5,000 slow streams: completed, worst run", ("slow_streams_5000_worst",), ">=", 5000, ""),
)


def _figure(report: dict, path: tuple) -> float | None:
    value: object = report
    for part in path:
        if not isinstance(value, dict):
            return None
        # JSON turns the concurrency keys into strings.
        value = value.get(part, value.get(str(part)))
    return value if isinstance(value, int | float) else None


def targets(report: dict) -> list[dict]:
    """Each target of issue #18 next to this run's figure (None: not measured in this run)."""
    streams_1000 = report.get("streams_1000")
    if streams_1000:
        direct, through = streams_1000["direct"]["ttft_p50_ms"], streams_1000["gateway"]["ttft_p50_ms"]
        if direct is not None and through is not None:
            streams_1000["added_ttft_p50_ms"] = through - direct
    if report.get("slow_streams_5000"):
        report["slow_streams_5000_worst"] = min(r["completed"] for r in report["slow_streams_5000"])
    rows = []
    for label, path, op, target, unit in TARGETS:
        figure = _figure(report, path)
        met = None if figure is None else figure <= target if op == "<=" else figure >= target
        rows.append({"target": label, "op": op, "goal": target, "unit": unit, "figure": figure, "met": met})
    return rows


def print_table(report: dict) -> None:
    machine = report["machine"]
    print(f"\nTollgate benchmark: {report['workers']} workers, {machine['cores']} cores, "
          f"{report['seconds']} s per run, load average {machine.get('load_at_start', 0):.1f} at the start "
          "(figures move by tens of percent on a busy machine)\n")
    if "non_stream" in report:
        print(f"{'non-stream':<14}{'direct rps':>12}{'gateway rps':>13}{'ratio':>7}"
              f"{'direct p50':>12}{'gw p50':>9}{'added p50':>11}{'gw p99':>9}{'cpu ms/req':>12}{'errors':>8}")
        for concurrency, row in report["non_stream"].items():
            d, g = row["direct"], row["gateway"]
            print(f"{'c=' + str(concurrency):<14}{d['rps']:>12.0f}{g['rps']:>13.0f}{row['rps_ratio']:>7.2f}"
                  f"{d['p50_ms']:>10.2f}ms{g['p50_ms']:>7.2f}ms{row['added_p50_ms']:>9.2f}ms{g['p99_ms']:>7.2f}ms"
                  f"{g['cpu_ms_per_request']:>12.2f}{g['non_2xx']:>8}")
        print("\nwhere a request's time goes (one client, ms): " + "  ".join(
            f"{name} {v['p50_ms']:.3f}" for name, v in report["stages"].items()))
    if "streams_1000" in report:
        s = report["streams_1000"]
        for side in ("direct", "gateway"):
            r = s[side]
            print(f"1000 streams {side:<8} completed {r['completed']}/{r['streams']}  "
                  f"ttft p50 {r['ttft_p50_ms'] or 0:.0f} ms  p99 {r['ttft_p99_ms'] or 0:.0f} ms  "
                  f"wall {r['wall_s']:.2f} s  errors {r['errors'] or 0}")
        print(f"peak RSS of the gateway tree during the stream test: {s['peak_rss_mib']:.0f} MiB "
              f"(idle {report['idle_rss_mib']:.0f} MiB)")
    for number, r in enumerate(report.get("slow_streams_5000", ()), 1):
        print(f"5000 slow streams, run {number}: completed {r['completed']}/{r['streams']}  wall {r['wall_s']:.1f} s  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB  errors {r['errors'] or 0}")
    print(f"\n{'target (issue #18)':<44}{'goal':>14}{'this run':>14}  met")
    for row in report["targets"]:
        unit = f" {row['unit']}" if row["unit"] else ""
        goal = f"{row['op']} {row['goal']:g}{unit}"
        figure = "not run" if row["figure"] is None else f"{row['figure']:.2f}{unit}" if isinstance(
            row["figure"], float) else f"{row['figure']}{unit}"
        met = "-" if row["met"] is None else "yes" if row["met"] else "NO"
        print(f"{row['target']:<44}{goal:>14}{figure:>14}  {met}")


if __name__ == "__main__":
    main()
