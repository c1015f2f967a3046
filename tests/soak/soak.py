"""Soak run (issue 8; docs/reliability.md): mixed traffic through the production start for a while.

Not collected by pytest. Needs PostgreSQL and Redis; creates (or empties) its own database:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/tollgate_soak REDIS_URL=redis://127.0.0.1:6379/2 \\
        .venv/bin/python -m tests.soak.soak --minutes 30

Two gunicorn workers; clients of several consumers send streams and non-streams to an OpenAI-format
route, an Anthropic-format route and a route whose first provider (a second sandbox) fails
one request in ten (its failures fail over). Prints requests served, errors by class, worker
memory at start and end, audit rows against answered requests, budgets against audited usage.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("faults-demo", "faults-claude", "faults-flaky")


def worker_rss_kib(master_pid: int) -> dict[int, int]:
    children = []
    for task in Path(f"/proc/{master_pid}/task").iterdir():
        children += [int(p) for p in (task / "children").read_text().split()]
    rss = {}
    for pid in children:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss[pid] = int(line.split()[1])
    return rss


def fresh_database(url: str) -> None:
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--consumers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=8)
    options = parser.parse_args()
    os.environ.setdefault("DJANGO_SECRET_KEY", "soak-only-secret-key-not-for-production")
    os.environ.setdefault("TOLLGATE_AUDIT_CHAIN_KEY", "soak-only-audit-chain-key")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")
    database_url, redis_url = os.environ["DATABASE_URL"], os.environ["REDIS_URL"]
    fresh_database(database_url)
    import django

    django.setup()
    from django.db.models import F, Sum

    from audit.models import AuditEvent
    from budgets.models import BudgetUsage
    from tests.faults.conftest import Load, running_gateway
    from tests.faults.seed import PREFIX, UPSTREAM_KEY, seed
    from tests.servers import free_port, sandbox_command, server_env, subprocess_server

    sandbox_port, flaky_port = free_port(), free_port()
    seeded = seed(sandbox_port, consumers=options.consumers, flaky_port=flaky_port)
    env = server_env(DATABASE_URL=database_url, TOLLGATE_PROVIDER_FAULTS_UPSTREAM_KEY=UPSTREAM_KEY)
    # The flaky provider fails one generation request in ten, whatever the rate.
    flaky_options = ("--require-key", UPSTREAM_KEY, "--fail-status", "500", "--fail-every", "10")
    with subprocess_server(sandbox_command(flaky_port, *flaky_options),
                           health_url=f"http://127.0.0.1:{flaky_port}/_sandbox/health", env=env,
                           log_name="soak-flaky"), \
         running_gateway(sandbox_port=sandbox_port, database_url=database_url, redis_url=redis_url,
                         workers=2, TOLLGATE_LOG_LEVEL="warning") as gateway:
        flaky = f"http://127.0.0.1:{flaky_port}/_sandbox"
        loads = [Load(gateway.url, seeded.keys[i % len(seeded.keys)], clients=1, model=MODELS[i % len(MODELS)])
                 for i in range(options.clients)]
        time.sleep(1)
        rss_start = worker_rss_kib(gateway.process.pid)
        for load in loads:
            load.__enter__()
        time.sleep(60)  # warmed up: the memory baseline is taken after the first minute
        rss_warm = worker_rss_kib(gateway.process.pid)
        time.sleep(max(0.0, options.minutes * 60 - 60))
        rss_end = worker_rss_kib(gateway.process.pid)
        for load in loads:
            load.__exit__()
        flaky_stats = httpx.get(f"{flaky}/stats").json()
        time.sleep(2)  # the budget mirror writes every TOLLGATE_BUDGET_MIRROR_SECONDS

    outcomes = [o for load in loads for o in load.outcomes]
    classes = Counter("answered" if o.answered else f"{o.status} {o.code}" for o in outcomes)
    answered_ids = {o.request_id for o in outcomes if o.answered}
    audited = AuditEvent.objects.filter(consumer_name__startswith=PREFIX)
    audited_ids = set(audited.values_list("request_id", flat=True))
    audited_tokens = audited.aggregate(t=Sum(F("prompt_tokens") + F("completion_tokens")))["t"] or 0
    budget_used = BudgetUsage.objects.filter(budget__consumer__name__startswith=PREFIX).aggregate(
        u=Sum("used"), r=Sum("reserved"))
    print(f"minutes: {options.minutes}, requests: {len(outcomes)}, by class: {dict(classes)}, "
          f"flaky provider: {flaky_stats['by_status']}")
    print(f"worker RSS KiB at start {sorted(rss_start.values())}, after 1 min {sorted(rss_warm.values())}, "
          f"at end {sorted(rss_end.values())}")
    print(f"answered: {len(answered_ids)}, audit rows: {audited.count()}, answered without a row: "
          f"{len(answered_ids - audited_ids)}")
    print(f"budget used: {budget_used['u']}, reserved: {budget_used['r']}, audited tokens: {audited_tokens}")
    ok = not (answered_ids - audited_ids) and budget_used["u"] == audited_tokens and not budget_used["r"]
    print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
