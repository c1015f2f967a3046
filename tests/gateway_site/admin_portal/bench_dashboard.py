"""The dashboard's queries over a million audit events (PostgreSQL): run it by hand, it is not collected.

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
.venv/bin/pytest tests/gateway_site/admin_portal/bench_dashboard.py -s
"""
from __future__ import annotations

import time

import pytest
from django.db import connection

from audit.selectors import usage_summary


@pytest.mark.django_db
def test_dashboard_over_a_million_events():
    if connection.vendor != "postgresql":
        pytest.skip("the benchmark fills the table with generate_series (PostgreSQL)")
    with connection.cursor() as cursor:
        cursor.execute("""
            INSERT INTO audit_auditevent (seq, time, request_id, consumer_id, consumer_name, key_prefix, route,
                provider, upstream_model, endpoint, status, error_class, prompt_tokens, completion_tokens,
                cost_micros, latency_us, attempts, client_ip, user_agent, body_mode, request_body, response_body,
                prev_hash, hash)
            SELECT g, now() - (g % 2592000) * interval '1 second', 'req' || g, g % 2000, 'consumer-' || (g % 2000),
                'tg-abc', 'demo', 'provider-' || (g % 3), 'model-' || (g % 7), 'chat.completions',
                CASE WHEN g % 50 = 0 THEN 503 ELSE 200 END, '', 10, 5, 100, 1000, 1 + (g % 40 = 0)::int,
                '', '', 'none', '', '', '', ''
            FROM generate_series(1, 1000000) AS g""")
        cursor.execute("ANALYZE audit_auditevent")
    for attempt in range(2):
        started = time.perf_counter()
        summary = usage_summary()
        elapsed = time.perf_counter() - started
        print(f"usage_summary over 1M events, run {attempt + 1}: {elapsed * 1000:.0f} ms")
    assert summary.totals.requests == 1_000_000
