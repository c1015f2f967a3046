"""Counters without Redis: budgets in the database, token and request windows in this process.

Used when REDIS_URL is unset (the embedded default, one process). A budget hold is a
conditional `UPDATE ... SET reserved = reserved + n WHERE used + reserved + n <= limit`
checked by its row count, plus a BudgetReservation row that settles or expires (a
worker killed between reserve and settle leaves one; the sweeper releases it).
Request and token windows live in the in-process cache, as django-ratelimit keeps
them. With Redis configured but unreachable none of this is used: admission refuses
(fail closed) or admits unmetered (fail open), see docs/budgets.md.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django_ratelimit.core import get_usage

from budgets.holds import (
    Admission,
    Hold,
    LimitExceeded,
    LimitsUnavailable,
    RateRule,
    refuse_budget,
    refuse_requests,
    refuse_tokens,
)
from budgets.models import BudgetReservation, BudgetUsage
from budgets.usage import window_row_ensure, window_rows
from gateway_site.lib.sharedcache import cache

_RATELIMIT_REQUEST = SimpleNamespace(method="POST")  # all django-ratelimit reads of the request


def request_rates_check(rules: list[RateRule], admission: Admission) -> None:
    """Count this request in each requests-per-window limit (django-ratelimit); sync, no I/O."""
    for rule in rules:
        assert rule.requests is not None  # the caller passes requests-per-window rules only
        value = admission.owner_value(rule.owner)
        usage = get_usage(_RATELIMIT_REQUEST, group=rule.ratelimit_group,
                          key=lambda _group, _request, v=value: v,
                          rate=(rule.requests, rule.window_seconds), increment=True)
        if usage is None:
            continue
        if usage["limit"] == 0 and usage["count"] == 0:
            # django-ratelimit's answer when the cache failed silently.
            raise LimitsUnavailable("the rate-limit counters did not answer")
        reset = max(0, usage["time_left"])
        admission.request_rates.append((rule.requests, rule.requests - usage["count"], reset))
        if usage["should_limit"]:
            raise refuse_requests(rule, reset, admission)


def token_windows_reserve(admission: Admission) -> None:
    """Tokens per window on the in-process cache: increment, then undo if over."""
    for i, token_hold in enumerate(admission.token_holds):
        ttl = token_hold.rule.window_seconds + 60
        cache.add(token_hold.key, 0, ttl)
        count = cache.incr(token_hold.key, token_hold.amount)
        if count > (token_hold.rule.tokens or 0):
            cache.decr(token_hold.key, token_hold.amount)
            for earlier in admission.token_holds[:i]:
                cache.decr(earlier.key, earlier.amount)
            raise refuse_tokens(token_hold, count - token_hold.amount, admission)
        token_hold.count = count


def token_windows_release(admission: Admission) -> None:
    for token_hold in admission.token_holds:
        try:
            cache.decr(token_hold.key, token_hold.amount)
        except ValueError:
            pass


def token_windows_settle(admission: Admission, tokens: int) -> None:
    """Keep only the real usage in each token window: add what was used beyond (or below) the hold."""
    for token_hold in admission.token_holds:
        try:
            cache.incr(token_hold.key, tokens - token_hold.amount)
        except ValueError:
            pass  # the window is over
        token_hold.count += tokens - token_hold.amount


def budgets_reserve(admission: Admission, now: datetime) -> None:
    """Hold budget with `UPDATE ... WHERE used + reserved + n <= limit`, all or none. Sync."""
    expires_at = now + timedelta(seconds=settings.TOLLGATE_RESERVATION_TTL_SECONDS)
    refusal: LimitExceeded | None = None
    with transaction.atomic():
        for hold in admission.holds:
            if not hold.held:
                continue
            room = hold.rule.limit - hold.amount

            def conditional_update(hold: Hold = hold, room: int = room) -> int:
                return window_rows(hold).filter(used__lte=room - F("reserved")).update(
                    reserved=F("reserved") + hold.amount)

            updated = conditional_update()
            if not updated:
                window_row_ensure(hold)  # a new window has no row yet
                updated = conditional_update()
            if not updated and _expire_reservations(hold=hold, now=now):
                updated = conditional_update()  # holds of a killed worker were in the way
            if not updated:
                total = window_rows(hold).annotate(total=F("used") + F("reserved")).values_list(
                    "total", flat=True).first()
                refusal = refuse_budget(hold, total or 0, admission)
                transaction.set_rollback(True)
                break
        if refusal is None:
            BudgetReservation.objects.bulk_create([
                BudgetReservation(budget_id=h.rule.id, period_start=h.window.period_start,
                                  request_id=admission.request_id, amount=h.amount, expires_at=expires_at)
                for h in admission.holds if h.held
            ])
    if refusal is not None:
        raise refusal
    _read_totals(admission)


def budgets_settle(admission: Admission, charges: list[int]) -> None:
    """Release the request's holds and charge its real usage, in one transaction. Sync."""
    with transaction.atomic():
        for hold, charge in zip(admission.holds, charges, strict=True):
            released = 0
            if hold.held and admission.metered:
                # Zero rows deleted: the hold expired and the sweeper already released it.
                deleted = BudgetReservation.objects.filter(
                    budget_id=hold.rule.id, period_start=hold.window.period_start,
                    request_id=admission.request_id).delete()[0]
                released = hold.amount if deleted else 0
            if not charge and not released:
                continue
            changes = {"used": F("used") + charge, "reserved": F("reserved") - released}
            if not window_rows(hold).update(**changes):
                window_row_ensure(hold)
                window_rows(hold).update(**changes)
    _read_totals(admission)


def _read_totals(admission: Admission) -> None:
    if not admission.holds:
        return
    rows = BudgetUsage.objects.filter(
        budget_id__in=[h.rule.id for h in admission.holds],
        period_start__in={h.window.period_start for h in admission.holds},
    ).values_list("budget_id", "period_start", "used", "reserved")
    totals = {(b, p): u + r for b, p, u, r in rows}
    for hold in admission.holds:
        hold.total = totals.get((hold.rule.id, hold.window.period_start), 0)


def _expire_reservations(*, hold: Hold | None = None, now: datetime) -> int:
    """Release database holds past their expiry; each one exactly once (delete, then check the count)."""
    expired = BudgetReservation.objects.filter(expires_at__lte=now)
    if hold is not None:
        expired = expired.filter(budget_id=hold.rule.id, period_start=hold.window.period_start)
    released = 0
    for pk, budget_id, period_start, amount in expired.values_list("pk", "budget_id", "period_start",
                                                                 "amount")[:1000]:
        with transaction.atomic():
            if BudgetReservation.objects.filter(pk=pk).delete()[0] == 1:
                BudgetUsage.objects.filter(budget_id=budget_id, period_start=period_start).update(
                    reserved=F("reserved") - amount)
                released += 1
    return released


def budget_reservations_expire(*, now: datetime | None = None) -> int:
    """Release database holds whose worker died (Redis holds expire inside the reserve script)."""
    return _expire_reservations(now=now or timezone.now())
