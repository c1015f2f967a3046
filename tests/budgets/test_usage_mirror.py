"""The database copy of settled usage, written in batches by each worker."""
from __future__ import annotations

import logging

import pytest
from django.utils import timezone

from budgets.holds import BudgetRule, Hold
from budgets.models import Budget, BudgetUsage
from budgets.periods import window_at
from budgets.usage import _UsageMirror


def _hold(budget_id: int) -> Hold:
    rule = BudgetRule(id=budget_id, metric="tokens", limit=1000, period="day", timezone="UTC", hard=True,
                      alert_at_percent=None, owner="consumer")
    return Hold(rule=rule, window=window_at("day", "UTC", timezone.now()), amount=0)


@pytest.mark.django_db(transaction=True)
def test_it_drops_charges_of_a_deleted_budget_and_writes_the_others(personas, caplog):
    kept = Budget.objects.create(consumer=personas.alice, metric="tokens", limit=1000)
    deleted = Budget.objects.create(consumer=personas.bob, metric="tokens", limit=1000)
    mirror = _UsageMirror()
    mirror._thread = object()  # type: ignore[assignment]  # no background thread: flush by hand
    mirror.add(_hold(kept.pk), 40)
    mirror.add(_hold(deleted.pk), 7)
    deleted.delete()
    with caplog.at_level(logging.WARNING, logger="tollgate.budgets"):
        mirror.flush()
    assert BudgetUsage.objects.get(budget=kept).used == 40
    assert "no longer exists" in caplog.text
    # Nothing left to retry forever.
    assert mirror._pending == {}
