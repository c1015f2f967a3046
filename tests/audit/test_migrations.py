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
