"""Redis (the shared counters) stops under load and comes back (issue 8, fault 1; docs/reliability.md).

A private redis-server on a free port is killed and restarted empty (no persistence), as
the worst case of an outage looks; the machine's shared Redis is never touched.
"""
from __future__ import annotations

import time

import pytest
import redis
from django.db import connection
from django.db.models import F, Sum
from django.utils import timezone

from audit.models import AuditEvent
from budgets.models import Budget, BudgetUsage
from tests.faults.conftest import Load, running_gateway, wait_for
from tests.faults.seed import PREFIX, seed, unseed
from tests.faults.servers import private_redis
from tests.servers import database_url_for, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Redis' socket timeouts (settings.CACHES OPTIONS) are 2 s: no refusal may take much longer.
REFUSAL_DEADLINE_SECONDS = 5.0


def _audited_tokens() -> int:
    totals = AuditEvent.objects.filter(consumer_name=f"{PREFIX}consumer-0").aggregate(
        tokens=Sum(F("prompt_tokens") + F("completion_tokens")))
    return totals["tokens"] or 0


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
# Timing under load (servers stopped and started within seconds): one retry, so a CI
# machine's momentary stall is not a failure; a real regression fails both runs.
@pytest.mark.flaky(reruns=1)
def test_redis_outage_refuses_cleanly_or_serves_metered_and_recovers(server_database, fail_open):
    sandbox_port = free_port()
    seeded = seed(sandbox_port)
    try:
        with private_redis() as server, running_gateway(
                sandbox_port=sandbox_port, database_url=database_url_for(connection.settings_dict),
                redis_url=server.url, TOLLGATE_LIMITS_FAIL_OPEN="1" if fail_open else "0") as gateway:
            with Load(gateway.url, seeded.key) as load:
                time.sleep(1.5)
                down_at = time.monotonic()
                server.stop()
                time.sleep(3.0)
                up_at = time.monotonic()
                server.start()
                # Recovery by itself: the first answered request after Redis is back.
                recovered = wait_for(lambda: any(o.answered for o in load.between(up_at, float("inf"))),
                                     timeout=15)
                time.sleep(1.0)
            prefix = gateway.env["TOLLGATE_CACHE_PREFIX"]
            time.sleep(1.0)  # the database copy is written every TOLLGATE_BUDGET_MIRROR_SECONDS
            live = redis.Redis.from_url(server.url)
            budget = Budget.objects.get(consumer__name=f"{PREFIX}consumer-0")
            day = timezone.now().date()
            live_key = f"{prefix}:budget:{{c{budget.consumer_id}}}:{budget.pk}:{day.isoformat()}"
            live_used = int(live.hget(live_key, "used") or 0)
            live.close()
        outcomes = load.outcomes
        before = [o for o in outcomes if o.ended < down_at]
        during = [o for o in outcomes if o.started > down_at + 0.5 and o.ended < up_at]
        print(f"fail_open={fail_open}: {len(outcomes)} requests, {len(during)} while down, "
              f"recovered {recovered:.2f}s after Redis came back")
        assert before and all(o.answered for o in before), {(o.status, o.code) for o in before}
        assert during, "no request was sent while Redis was down"
        slowest = max(outcomes, key=lambda o: o.ended - o.started)
        assert slowest.ended - slowest.started < REFUSAL_DEADLINE_SECONDS, slowest
        assert all(o.status is not None for o in outcomes), "a request got no answer at all"
        if fail_open:
            assert all(o.answered for o in during), {(o.status, o.code) for o in during}
        else:
            assert all((o.status, o.code) == (503, "limits_unavailable") for o in during), \
                {(o.status, o.code) for o in during}
        assert recovered < 5.0

        # Every answered request is audited, and the budget's counters equal the audited usage.
        answered = {o.request_id for o in outcomes if o.answered}
        assert answered <= set(AuditEvent.objects.values_list("request_id", flat=True))
        audited = _audited_tokens()
        database = BudgetUsage.objects.get(budget=budget, period_start=day)
        assert database.reserved == 0
        assert database.used == audited, f"database copy {database.used}, audited {audited}"
        # Redis came back empty and was seeded from the database copy, then counted on.
        assert live_used <= audited
    finally:
        unseed()
