"""Three gateway nodes behind nginx, measured (issue #18; docs/deployment.md, "Three nodes behind a
load balancer").

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/2 \\
        .venv/bin/python tests/benchmarks/three_nodes.py [--workers 2] [--seconds 5] [--rounds 5] [--redis-cluster]

Starts what tests/scale/test_three_nodes.py starts (the sandbox provider, three nodes each a
gunicorn master with uvicorn workers, Debian's nginx in front; one scratch PostgreSQL database,
test_tollgate_<pid>, dropped afterwards; one Redis under a key prefix of its own, or with
--redis-cluster a 3-master Redis Cluster started for the run), all on
127.0.0.1, and prints:

- throughput and latency through nginx (wrk, keep-alive clients), and how nginx spread it;
- 100 concurrent requests against one hard token budget: served, refused, audited tokens;
- how long a key revoked through the admin API keeps working on each node (polled on each
  node directly, fresh connections, every few milliseconds), over `--rounds` revocations;
- how long after node 1 opened a breaker nodes 2 and 3 route away from it;
- one node killed (SIGKILL, master and workers) under load: answered, refused, missing audit rows;
- the audit chain's verification.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
os.environ.setdefault("TOLLGATE_LOG_LEVEL", "warning")

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from django.db.models import Count, Sum  # noqa: E402

from tests.scale.nodes import (  # noqa: E402
    access_log_nodes,
    chat,
    chat_body,
    fire,
    issue_key,
    metric_value,
    nginx_binary,
    redis_forget,
    redis_topology_env,
    revoke_key,
    scrape,
    seed_nodes,
    three_nodes,
)
from tests.servers import database_url_for, free_port, server_env  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def throughput(cluster, key: str, seconds: int, concurrency: int) -> dict:
    body = json.dumps(chat_body("nodes-demo"))
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                     f'wrk.headers["Content-Type"] = "application/json"\n'
                     f'wrk.headers["Authorization"] = "Bearer {key}"\n')
        script.flush()
        out = subprocess.run(["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "--latency", "-s", script.name,
                              f"{cluster.url}/v1/chat/completions"], capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) / 1000 if unit == "us" else float(value) * 1000 if unit == "s" else float(value)

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50_ms": latency("50"),
            "p99_ms": latency("99"), "non_2xx": int(non2xx.group(1)) if non2xx else 0}


def budget_run(cluster) -> dict:
    from audit.models import AuditEvent

    bodies = [{**chat_body("nodes-budget"), "stream": i % 2 == 1} for i in range(100)]
    started = time.monotonic()
    responses = asyncio.run(fire(cluster.url, cluster.keys.budget, bodies))
    wall = time.monotonic() - started
    statuses = Counter(r.status_code for r in responses)
    audited = AuditEvent.objects.filter(consumer_name="nodes-budget", status=200).aggregate(
        p=Sum("prompt_tokens"), c=Sum("completion_tokens"), n=Count("seq"))
    nodes = Counter(access_log_nodes(cluster.nginx.access_log).get(r.headers.get("x-request-id"), "?")
                    for r in responses)
    return {"statuses": dict(statuses), "wall_s": wall, "limit": cluster.budget_limit,
            "audited_tokens": (audited["p"] or 0) + (audited["c"] or 0), "audited_answered": audited["n"],
            "codes": dict(Counter(r.json()["error"]["code"] for r in responses if r.status_code != 200)),
            "per_node": dict(nodes)}


def revocation_round(cluster, after: float = 2.5) -> dict[str, dict]:
    """A key issued and used on every node; pollers (one thread per node, a fresh connection per
    request, so both workers of a node take turns) run before, during and after its revocation
    through nginx. Per node: the latest request *sent after the revocation was confirmed* that
    was still accepted, in ms after the confirmation (the API's answer), and the first refusal."""
    issued = issue_key(cluster.url, cluster.api_token, cluster.revoke_consumer)
    headers = {"Authorization": f"Bearer {issued['plaintext']}"}
    body = chat_body("nodes-demo")
    marks: dict[str, float] = {}
    stop = threading.Event()
    results: dict[str, dict] = {}
    ready = threading.Barrier(len(cluster.nodes) + 1)

    def poll(node) -> None:
        seen: list[tuple[float, int]] = []
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            ready.wait()
            while not stop.is_set():
                sent = time.monotonic()
                seen.append((sent, client.post(f"{node.url}/v1/chat/completions", json=body,
                                               headers=headers).status_code))
                time.sleep(0.005)
        confirmed = marks["confirmed"]
        accepted = [t for t, status in seen if status == 200 and t >= confirmed]
        refused = [t for t, status in seen if status == 401]
        results[node.name] = {
            "last_accepted_ms": (max(accepted) - confirmed) * 1000 if accepted else None,
            "first_refused_ms": (min(refused) - confirmed) * 1000 if refused else None,
            "accepted_before": sum(status == 200 and t < marks["sent"] for t, status in seen),
            "other": sum(status not in (200, 401) for _t, status in seen), "polls": len(seen)}

    threads = [threading.Thread(target=poll, args=(node,)) for node in cluster.nodes]
    for thread in threads:
        thread.start()
    ready.wait()
    time.sleep(1.5)  # the key in use on every node, each worker's cache checked and warm
    marks["sent"] = time.monotonic()
    revoke_key(cluster.url, cluster.api_token, issued["id"])
    marks["confirmed"] = time.monotonic()  # the API answered: the revocation is committed
    time.sleep(after)
    stop.set()
    for thread in threads:
        thread.join()
    results["api"] = {"revoke_call_ms": (marks["confirmed"] - marks["sent"]) * 1000}
    return results


def breaker_run(cluster) -> dict:
    """Node 1 opens the breaker (three failed-over requests); then nodes 2 and 3 are asked at once,
    each in its own thread: how many of their requests still tried the failing deployment."""
    first, *others = cluster.nodes
    for _ in range(3):
        chat(first.url, cluster.keys.breaker, "nodes-breaker")
    opened = time.monotonic()
    seen: dict[str, dict] = {}

    def ask(node) -> None:
        tried_failing = 0
        while time.monotonic() - opened < 5:
            response = chat(node.url, cluster.keys.breaker, "nodes-breaker")
            if response.headers.get("x-tollgate-attempts") == "1":
                seen[node.name] = {"routes_away_ms": (time.monotonic() - opened) * 1000,
                                   "requests_to_open_deployment": tried_failing}
                break
            tried_failing += 1
        seen.setdefault(node.name, {"routes_away_ms": None, "requests_to_open_deployment": tried_failing})
        seen[node.name]["metrics_state"] = metric_value(scrape(node.url), "tollgate_circuit_breaker_state",
                                                        provider="nodes-failing")

    threads = [threading.Thread(target=ask, args=(node,)) for node in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return seen


def kill_run(cluster, key: str) -> dict:
    from audit.models import AuditEvent
    from tests.faults.conftest import Load

    victim = cluster.nodes[2]
    with Load(cluster.url, key, clients=8, model="nodes-demo", timeout=10) as load:
        time.sleep(2.0)
        killed_at = time.monotonic()
        killed = victim.kill()
        time.sleep(3.0)
    answered = {o.request_id for o in load.outcomes if o.answered}
    stored = set(AuditEvent.objects.filter(request_id__in=answered).values_list("request_id", flat=True))
    after = [o for o in load.outcomes if o.started >= killed_at]
    around = [o for o in load.outcomes if o.ended >= killed_at and o.started < killed_at]
    victim.restart()
    return {"killed_pids": len(killed), "requests": len(load.outcomes), "answered": len(answered),
            "missing_audit": len(answered - stored),
            "in_flight_at_kill": dict(Counter(outcome_name(o) for o in around)),
            "after_kill": dict(Counter(outcome_name(o) for o in after))}


def outcome_name(outcome) -> str:
    return "answered" if outcome.answered else f"{outcome.status} {outcome.code}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn workers per node")
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="revocations measured")
    parser.add_argument("--redis-cluster", action="store_true",
                        help="the nodes' shared state on a Redis Cluster started for the run (tests/redis_cluster.py; "
                             "Celery's broker stays on REDIS_URL)")
    args = parser.parse_args()
    binary = nginx_binary()
    if binary is None:
        raise SystemExit("nginx is not installed (apt-get install nginx)")
    if not settings.REDIS_URL or not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        raise SystemExit("needs DATABASE_URL=postgres://... and REDIS_URL")
    if args.redis_cluster and not hasattr(settings, "TOLLGATE_REDIS_CLUSTER_NODES"):
        raise SystemExit("these settings do not speak Redis Cluster (TOLLGATE_REDIS_CLUSTER_NODES)")

    from audit.chain import chain_verify
    from proxy.bounds import estimate_prompt_tokens

    creation = connection.creation
    creation.create_test_db(verbosity=0, autoclobber=True, keepdb=False)
    prefix = f"tgnodesbench{os.getpid()}"
    report: dict = {"workers_per_node": args.workers, "cores": os.cpu_count(),
                    "redis": "cluster (3 masters, 3 replicas)" if args.redis_cluster else "one server"}
    stack = ExitStack()
    try:
        topology = redis_topology_env(settings.REDIS_URL)
        if args.redis_cluster:
            from tests.redis_cluster import free_base_port, start_cluster

            handle = start_cluster(Path(stack.enter_context(tempfile.TemporaryDirectory())), free_base_port())
            stack.callback(handle.stop)
            topology = handle.nodes_env(celery_broker_url=settings.REDIS_URL)
        sandbox_port = free_port()
        body = chat_body("nodes-budget")
        seeded = seed_nodes(sandbox_port, budget_limit=20 * (estimate_prompt_tokens(body) + body["max_tokens"]))
        env = server_env(DATABASE_URL=database_url_for(connection.settings_dict), TOLLGATE_CACHE_PREFIX=prefix,
                         **topology)
        started = time.monotonic()
        with three_nodes(env, sandbox_port=sandbox_port, nginx_bin=binary, workers=args.workers) as running:
            report["start_s"] = time.monotonic() - started
            cluster = running
            for name, value in vars(seeded).items():
                setattr(cluster, name, value)
            wrk_key = issue_key(cluster.url, cluster.api_token, cluster.revoke_consumer)["plaintext"]
            throughput(cluster, wrk_key, 1, 16)  # warm up: connections, caches
            report["throughput"] = {c: throughput(cluster, wrk_key, args.seconds, c) for c in (16, 64)}
            report["budget"] = budget_run(cluster)
            report["revocation"] = [revocation_round(cluster) for _ in range(args.rounds)]
            report["breaker"] = breaker_run(cluster)
            report["kill"] = kill_run(cluster, cluster.keys.load)
            names = {f"127.0.0.1:{node.port}": node.name for node in cluster.nodes}
            report["per_node_requests"] = dict(sorted(Counter(
                names.get(n, n) for n in access_log_nodes(cluster.nginx.access_log).values()).items()))
            report["budget"]["per_node"] = dict(sorted((names.get(n, n), v)
                                                       for n, v in report["budget"]["per_node"].items()))
            stopping = time.monotonic()
        report["stop_s"] = time.monotonic() - stopping
        verify_started = time.monotonic()
        chain = chain_verify()
        report["audit"] = {"ok": chain.ok, "checked": chain.checked, "problem": chain.problem,
                           "verify_s": time.monotonic() - verify_started}
    finally:
        stack.close()
        redis_forget(settings.REDIS_URL, prefix)
        redis_forget(settings.REDIS_URL, settings.CACHES["default"]["KEY_PREFIX"])  # this process's (the seed's)
        creation.destroy_test_db(connection.settings_dict["NAME"], verbosity=0)
    out = ROOT / "var" / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    print_report(report)
    (out / "three_nodes.json").write_text(json.dumps(report, indent=2, default=str))


def print_report(r: dict) -> None:
    print(f"\nThree nodes behind nginx: {r['workers_per_node']} workers per node, {r['cores']} cores, "
          f"Redis: {r['redis']}; "
          f"started in {r['start_s']:.1f} s, stopped in {r['stop_s']:.1f} s\n")
    for c, t in r["throughput"].items():
        print(f"through nginx, c={c:<3} {t['rps']:7.0f} req/s  p50 {t['p50_ms']:6.1f} ms  p99 {t['p99_ms']:6.1f} ms"
              f"  non-2xx {t['non_2xx']}")
    print(f"requests per node (nginx's log, whole run): {r['per_node_requests']}")
    b = r["budget"]
    print(f"\nbudget, 100 concurrent: {b['statuses']} {b['codes']} in {b['wall_s']:.2f} s; audited tokens "
          f"{b['audited_tokens']} of limit {b['limit']} ({b['audited_answered']} answered); per node {b['per_node']}")
    print("\nrevoked key: ms after the admin API confirmed the revocation, per round "
          "(latest request still accepted; first refused):")
    for name in ("node1", "node2", "node3"):
        rounds = [x[name] for x in r["revocation"]]
        last = [x["last_accepted_ms"] for x in rounds]
        first = [x["first_refused_ms"] or 0.0 for x in rounds]
        shown = " ".join("    -" if v is None else f"{v:5.0f}" for v in last)
        print(f"  {name}: accepted until {shown}   (max {max((v or 0.0) for v in last):4.0f}); first refused "
              + " ".join(f"{v:5.0f}" for v in first)
              + f"; {sum(x['polls'] for x in rounds)} polls, {sum(x['other'] for x in rounds)} other statuses")
    api = statistics.median(x["api"]["revoke_call_ms"] for x in r["revocation"])
    print(f"  (-: no request sent after the confirmation was accepted; the revoke call itself took {api:.0f} ms, "
          "median)")
    print("\nbreaker opened through node 1, seen by: " + ", ".join(
        f"{n}: {v['requests_to_open_deployment']} requests still tried it, routed away after "
        f"{v['routes_away_ms'] or -1:.0f} ms, /metrics state {v['metrics_state']:.0f} (2: open)"
        for n, v in r["breaker"].items()))
    k = r["kill"]
    print(f"\nnode 3 killed under load (8 clients, {k['killed_pids']} processes): {k['requests']} requests, "
          f"{k['answered']} answered, {k['missing_audit']} answered without an audit row; "
          f"in flight at the kill {k['in_flight_at_kill']}; started after it {k['after_kill']}")
    a = r["audit"]
    print(f"\naudit chain: {'verifies' if a['ok'] else 'BROKEN: ' + a['problem']} ({a['checked']} events, "
          f"{a['verify_s']:.2f} s)")


if __name__ == "__main__":
    main()
