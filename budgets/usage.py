"""BudgetUsage rows, the database's figure of each budget window, and the usage mirror.

With Redis the counters of record are there, and the database keeps a copy of the
settled usage (reports, history, and the figure a restarted Redis is seeded from).
Writing that copy with every request cost a commit per request; the mirror instead
collects the charges and one thread per process writes them every
TOLLGATE_BUDGET_MIRROR_SECONDS in one transaction. Without Redis the same rows are the
counters of record (budgets.fallback), which is why the row helpers live here.
"""
from __future__ import annotations

import atexit
import logging
import threading
import time
from datetime import date

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F, QuerySet

from budgets.holds import Admission, Hold
from budgets.models import BudgetUsage
from gateway_site.lib.db import connections_release

logger = logging.getLogger("tollgate.budgets")


def window_rows(hold: Hold) -> QuerySet[BudgetUsage]:
    """The (zero or one) usage row of the hold's budget window."""
    return BudgetUsage.objects.filter(budget_id=hold.rule.id, period_start=hold.window.period_start)


def window_row_ensure(hold: Hold) -> None:
    """Create the window's usage row if it is missing (a new window); safe under concurrency."""
    BudgetUsage.objects.bulk_create(
        [BudgetUsage(budget_id=hold.rule.id, period_start=hold.window.period_start,
                     starts_at=hold.window.starts_at, ends_at=hold.window.ends_at)],
        ignore_conflicts=True,
    )


class _UsageMirror:
    """Settled charges waiting for the database copy, written by one thread per process.

    A killed worker loses at most TOLLGATE_BUDGET_MIRROR_SECONDS of the copy, never of
    Redis, and closing a period takes the larger of the two.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, date], list] = {}
        self._thread: threading.Thread | None = None
        self._failing = False

    def add(self, hold: Hold, charge: int) -> None:
        with self._lock:
            entry = self._pending.setdefault((hold.rule.id, hold.window.period_start), [hold, 0])
            entry[1] += charge
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="budget-mirror", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(settings.TOLLGATE_BUDGET_MIRROR_SECONDS)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            connections_release()
            try:
                with transaction.atomic():
                    for hold, charge in pending.values():
                        _mirror_charge(hold, charge)
            except IntegrityError:
                # A budget was deleted while its charges waited: write the others one by
                # one and drop those (retrying them would fail forever).
                for window_id, (hold, charge) in list(pending.items()):
                    try:
                        with transaction.atomic():
                            _mirror_charge(hold, charge)
                    except IntegrityError:
                        logger.warning("dropped %d of usage for budget %s, which no longer exists",
                                       charge, hold.rule.id)
                    del pending[window_id]
            self._failing = False
        except Exception:
            # Logged with its traceback once per outage, not on every retry.
            logger.error("writing %d budget charges to the database failed; retrying", len(pending),
                         exc_info=not self._failing)
            self._failing = True
            with self._lock:
                for window_id, (hold, charge) in pending.items():
                    self._pending.setdefault(window_id, [hold, 0])[1] += charge
        finally:
            if threading.current_thread() is self._thread:
                connections.close_all()  # back to the pool between flushes


def _mirror_charge(hold: Hold, charge: int) -> None:
    if not window_rows(hold).update(used=F("used") + charge):
        window_row_ensure(hold)
        window_rows(hold).update(used=F("used") + charge)


usage_mirror = _UsageMirror()
atexit.register(usage_mirror.flush)


def usage_mirror_write(admission: Admission, charges: list[int]) -> None:
    """The database copy of one request's charges, written at once (TOLLGATE_BUDGET_MIRROR_SECONDS = 0). Sync."""
    if not any(charges):
        return
    with transaction.atomic():  # one commit for all the request's budgets
        for hold, charge in zip(admission.holds, charges, strict=True):
            if charge and not window_rows(hold).update(used=F("used") + charge):
                window_row_ensure(hold)
                window_rows(hold).update(used=F("used") + charge)
