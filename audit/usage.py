"""The daily usage rollup: each closed UTC day of the audit log, added up once into DailyUsage.

Closed days never change, so one GROUP BY per dimension over a day's events, run
once, lets the usage summary (audit.selectors.usage_summary) read a few hundred
rollup rows plus today's events through the log's time index instead of 30 days
of events (measured in tests/gateway_site/admin_portal/bench_dashboard.py).
"""
from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, Sum
from django.db.models.functions import Coalesce, TruncDate
from django.utils import timezone

from audit.models import AuditEvent, DailyUsage

DAYS = 30
# A day is rolled up this long after it ends, so that requests that began before midnight are in it.
ROLLUP_DELAY = timedelta(hours=1)
_ERROR = Q(status__gte=400) | Q(status__isnull=True) | ~Q(error_class="")
_TOKENS = Coalesce(F("prompt_tokens"), 0) + Coalesce(F("completion_tokens"), 0)
_COLUMNS = {"total": None, "consumer": "consumer_name", "provider": "provider", "model": "upstream_model"}
_ROLLUP_COLUMNS = ("dimension", "name", "day", "requests", "tokens", "cost_micros", "errors", "failovers")

# (dimension, name, day, requests, tokens, cost_micros, errors, failovers)
UsageRow = tuple[str, str, date, int, int, int, int, int]


def midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def window_bounds(days: int, now: datetime) -> tuple[date, date, datetime]:
    """The window's first and last (today) UTC days, and the moment it starts."""
    until = now.astimezone(UTC).date()
    since = until - timedelta(days=days - 1)
    return since, until, midnight(since)


def last_closed_day(now: datetime, until: date) -> date:
    """The last day whose rollup is final: it ended more than ROLLUP_DELAY ago, before `until`."""
    return min((now - ROLLUP_DELAY).astimezone(UTC).date() - timedelta(days=1), until - timedelta(days=1))


def live_rows(start: datetime, end: datetime | None, consumer: str | None) -> list[UsageRow]:
    """Usage rows per day and dimension, added up from the audit log itself (start <= time < end)."""
    events = AuditEvent.objects.filter(time__gte=start)
    if end is not None:
        events = events.filter(time__lt=end)
    if consumer:
        events = events.filter(consumer_name=consumer)
    events = events.annotate(day=TruncDate("time", tzinfo=UTC))
    rows: list[UsageRow] = []
    for dimension, column in _COLUMNS.items():
        group = ["day", column] if column else ["day"]
        for r in (events.values(*group)
                  .annotate(requests=Count("seq"), tokens=Sum(_TOKENS), cost_micros=Sum("cost_micros"),
                            errors=Count("seq", filter=_ERROR), failovers=Count("seq", filter=Q(attempts__gt=1)))
                  .order_by()):
            rows.append((dimension, r[column] if column else "", r["day"], r["requests"], r["tokens"] or 0,
                         r["cost_micros"] or 0, r["errors"], r["failovers"]))
    return rows


def usage_rollup_day(*, day: date) -> int:
    """Add up one closed UTC day into DailyUsage (replacing what was there); returns its rows."""
    rows = [DailyUsage(day=day, dimension=dim, name=(name or "")[:200], requests=req, tokens=tok, cost_micros=cost,
                       errors=err, failovers=fail)
            for dim, name, _, req, tok, cost, err, fail in live_rows(midnight(day), midnight(day + timedelta(days=1)),
                                                                      None)]
    if not any(r.dimension == "total" for r in rows):
        rows.append(DailyUsage(day=day, dimension="total", name=""))  # marks an empty day as done
    try:
        with transaction.atomic():
            DailyUsage.objects.filter(day=day).delete()
            DailyUsage.objects.bulk_create(rows)
    except IntegrityError:
        pass  # another admin's page rolled the same day up at the same moment
    return len(rows)


def usage_rollup_missing(*, since: date, until: date) -> int:
    """Roll up each day from `since` to `until` (inclusive) that is not rolled up yet; returns how many."""
    if until < since:
        return 0
    done = set(DailyUsage.objects.filter(dimension="total", day__gte=since, day__lte=until)
               .values_list("day", flat=True))
    missing = [since + timedelta(days=i) for i in range((until - since).days + 1)
               if since + timedelta(days=i) not in done]
    for day in missing:
        usage_rollup_day(day=day)
    return len(missing)


def usage_rollup_recent(*, days: int = DAYS, now: datetime | None = None) -> int:
    """Roll up the closed days of the last `days` that are missing (usually none); returns how many."""
    now = now or timezone.now()
    since, until, _ = window_bounds(days, now)
    return usage_rollup_missing(since=since, until=last_closed_day(now, until))


def rolled_up_rows(*, since: date, until: date) -> list[UsageRow]:
    """Usage rows of closed days from the rollup, rolling up (once) any day that is missing."""
    if until < since:
        return []
    usage_rollup_missing(since=since, until=until)
    return list(DailyUsage.objects.filter(day__gte=since, day__lte=until).values_list(*_ROLLUP_COLUMNS))
