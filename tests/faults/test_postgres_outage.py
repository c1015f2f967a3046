"""PostgreSQL stops under load and comes back (issue 8, fault 2; docs/reliability.md).

A private PostgreSQL cluster (initdb in a temporary directory, a free port) is shut down
and started again; the machine's shared PostgreSQL is never touched.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import psycopg
import pytest

from tests.faults.conftest import Load, running_gateway, wait_for
from tests.faults.servers import private_postgres
from tests.servers import ROOT, free_port, server_env

pytestmark = [pytest.mark.e2e]


def _manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True, capture_output=True,
                          text=True, timeout=120).stdout


def _ready(url: str) -> int:
    try:
        return httpx.get(f"{url}/readyz", timeout=5).status_code
    except httpx.HTTPError:
        return 0


# Timing under load: one retry (see test_redis_outage.py).
@pytest.mark.flaky(reruns=1)
def test_postgres_outage_refuses_cleanly_and_recovers_by_itself():
    sandbox_port = free_port()
    with private_postgres() as server:
        env = server_env(DATABASE_URL=server.url, DJANGO_SETTINGS_MODULE="gateway_site.settings")
        env.pop("REDIS_URL", None)
        _manage(env, "manage.py", "migrate", "--no-input")
        keys = json.loads(_manage(env, "-m", "tests.faults.seed", str(sandbox_port)))["keys"]
        # Short waits for a pooled connection keep the test short; refusals take up to two of them.
        with running_gateway(sandbox_port=sandbox_port, database_url=f"{server.url}?pool_timeout=1",
                             redis_url=os.environ.get("REDIS_URL")) as gateway:
            with Load(gateway.url, keys[0], clients=3) as load:
                time.sleep(1.5)
                assert _ready(gateway.url) == 200
                down_at = time.monotonic()
                server.stop()
                wait_for(lambda: _ready(gateway.url) == 503, timeout=10)
                time.sleep(3.0)
                up_at = time.monotonic()
                server.start()
                recovered = wait_for(lambda: any(o.answered for o in load.between(up_at, float("inf"))),
                                     timeout=20)
                wait_for(lambda: _ready(gateway.url) == 200, timeout=10)
                time.sleep(1.0)
        outcomes = load.outcomes
        during = [o for o in outcomes if o.started > down_at + 0.5 and o.started < up_at]
        print(f"{len(outcomes)} requests, {len(during)} while down, recovered {recovered:.2f}s after "
              f"PostgreSQL came back; while down: {sorted({(o.status, o.code) for o in during}, key=str)}")
        assert during, "no request was sent while PostgreSQL was down"
        # Refused cleanly: an error in the caller's shape, never an answer without its audit row.
        # (One that started while it was down may still be answered once it is back, audited.)
        refused = [o for o in during if not o.answered]
        assert refused and all((o.status, o.code) == (503, "database_unavailable") for o in refused), \
            {(o.status, o.code) for o in refused}
        assert not any(o.answered and o.ended < up_at for o in during)
        assert max(o.ended - o.started for o in outcomes) < 6.0
        assert recovered < 10.0
        answered = {o.request_id for o in outcomes if o.answered}
        with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname=tollgate") as conn:
            stored = {row[0] for row in conn.execute("SELECT request_id FROM audit_auditevent")}
        assert answered <= stored, f"{len(answered - stored)} answered requests have no audit event"
