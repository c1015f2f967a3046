"""Migrations that move data between apps: each AuditPolicy row becomes Consumer.audit_body_mode."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.apps.registry import Apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

# The last state with AuditPolicy, and the consumer's new (still empty) field.
BEFORE = [("audit", "0003_dailyusage"), ("budgets", "0006_consumer_audit_body_mode")]


def migrate(targets: list[tuple[str, str]] | None = None) -> Apps:
    """Migrate the test database to `targets` (default: the latest); the models as of then."""
    executor = MigrationExecutor(connection)
    targets = targets or executor.loader.graph.leaf_nodes()
    executor.migrate(targets)
    return MigrationExecutor(connection).loader.project_state(targets).apps


@pytest.fixture
def migrator(transactional_db) -> Iterator[None]:
    yield
    migrate()  # whatever happened, later tests get the latest schema


def test_each_audit_policy_becomes_its_consumers_body_mode(migrator):
    old = migrate(BEFORE)
    Consumer = old.get_model("budgets", "Consumer")
    AuditPolicy = old.get_model("audit", "AuditPolicy")
    AuditPolicy.objects.create(consumer=Consumer.objects.create(name="full-team"), body_mode="full")
    AuditPolicy.objects.create(consumer=Consumer.objects.create(name="quiet-team"), body_mode="none")
    # "metadata" is also the default; an explicit policy stays explicit.
    AuditPolicy.objects.create(consumer=Consumer.objects.create(name="metadata-team"), body_mode="metadata")
    Consumer.objects.create(name="no-policy-team")

    new = migrate()

    modes = dict(new.get_model("budgets", "Consumer").objects.values_list("name", "audit_body_mode"))
    assert modes == {"full-team": "full", "quiet-team": "none", "metadata-team": "metadata",
                     "no-policy-team": None}
    with pytest.raises(LookupError):
        new.get_model("audit", "AuditPolicy")
    assert "audit_auditpolicy" not in connection.introspection.table_names()


def test_going_back_recreates_the_policies(migrator):
    from budgets.models import Consumer

    Consumer.objects.create(name="full-team", audit_body_mode="full")
    Consumer.objects.create(name="no-policy-team")
    old = migrate(BEFORE)
    policies = old.get_model("audit", "AuditPolicy").objects.values_list("consumer__name", "body_mode")
    assert list(policies) == [("full-team", "full")]


def test_the_daily_rollup_kept_its_table(db):
    from audit.models import DailyUsage

    assert DailyUsage._meta.db_table == "budgets_dailyusage"
    assert "budgets_dailyusage" in connection.introspection.table_names()


def test_the_single_chain_becomes_lane_0_and_keeps_verifying_next_to_new_lanes(migrator):
    """Migration 0008 (issues #16, #18): rows sealed by the gateway before format versions and lanes
    become lane 0's history (lane_seq = seq), the head and the sink cursor lane 0's, and seq goes on
    from a sequence started past them."""
    from datetime import UTC, datetime

    from audit.chain import CHAIN_FIELDS_V1, chain_signing_key, event_hash, head_fields

    old = migrate([("audit", "0007_event_usage_source")])
    Event, Head, Cursor = (old.get_model("audit", name) for name in ("AuditEvent", "AuditChainHead",
                                                                      "AuditSinkCursor"))
    key_id, key = chain_signing_key()
    prev = "0" * 64
    for seq in range(1, 6):  # what the writer of then stored: CHAIN_FIELDS_V1, sealed with their hash
        values = dict(seq=seq, prev_hash=prev, time=datetime(2025, 1, 1, seq, tzinfo=UTC), request_id=f"req_old{seq}",
                      consumer_id=1, consumer_name="old-team", key_prefix="tg-abcdefg", route="demo",
                      provider="sandbox", upstream_model="m", endpoint="chat.completions", status=200,
                      error_class="", prompt_tokens=10, completion_tokens=2, cost_micros=5, latency_us=100,
                      ttft_us=None, attempts=1, client_ip="127.0.0.1", user_agent="old", body_mode="none",
                      request_body="", response_body="", usage_source="provider" if seq % 2 else None)
        prev = event_hash(tuple(values[f] for f in CHAIN_FIELDS_V1), key=key)
        Event.objects.create(**values, key_id=key_id, hash=prev)
    Head.objects.create(pk=1, **head_fields(5, prev))
    Cursor.objects.create(name="http", last_seq=3)

    migrate()

    from audit.chain import chain_verify
    from audit.models import AuditEvent, AuditSinkCursor
    from audit.services import events_append
    from tests.audit.conftest import records

    assert list(AuditEvent.objects.order_by("seq").values_list("seq", "lane", "lane_seq", "format")) == [
        (seq, 0, seq, None) for seq in range(1, 6)]
    assert AuditSinkCursor.objects.get().lane == 0 and AuditSinkCursor.objects.get().last_seq == 3
    report = chain_verify()
    assert report.ok and report.checked == 5, report.problem
    events_append(records(3, cache_read_tokens=4))
    new = list(AuditEvent.objects.filter(format=2).order_by("seq").values_list("seq", "lane", "lane_seq"))
    assert new == [(6, 0, 6), (7, 0, 7), (8, 0, 8)]
    report = chain_verify()
    assert report.ok and report.checked == 8, report.problem
