"""Reads used in several places: the exports' event ranges, the usage summary (dashboard and admin API)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from audit.models import AuditEvent
from audit.usage import DAYS, UsageRow, last_closed_day, live_rows, midnight, rolled_up_rows, window_bounds


def events_in_range(*, since: datetime | None = None, until: datetime | None = None,
                    consumer: str | None = None) -> QuerySet[AuditEvent]:
    """Events with since <= time < until (optionally one consumer's), oldest first."""
    events = AuditEvent.objects.all()
    if since is not None:
        events = events.filter(time__gte=since)
    if until is not None:
        events = events.filter(time__lt=until)
    if consumer:
        events = events.filter(consumer_name=consumer)
    return events.order_by("time", "seq")


# --- Usage per day and the top consumers, models and providers (dashboard and admin API) ----

TOP = 8


@dataclass
class Day:
    day: date
    requests: int = 0
    tokens: int = 0
    cost_micros: int = 0
    errors: int = 0
    failovers: int = 0


@dataclass
class Summary:
    since: date
    until: date  # inclusive
    days: list[Day]
    consumers: list[dict]  # top consumers over the period: name, requests, tokens, cost_micros
    consumer_days: dict[str, list[int]]  # tokens per day of each top consumer (and "others")
    models: list[dict]
    providers: list[dict]

    @property
    def totals(self) -> Day:
        total = Day(self.until)
        for d in self.days:
            total.requests += d.requests
            total.tokens += d.tokens
            total.cost_micros += d.cost_micros
            total.errors += d.errors
            total.failovers += d.failovers
        return total


def _top(rows: list[UsageRow], dimension: str) -> list[dict]:
    totals: dict[str, list[int]] = {}
    for dim, name, _, req, tok, cost, err, _fail in rows:
        if dim == dimension:
            t = totals.setdefault(name or "(none)", [0, 0, 0, 0])
            t[0] += req
            t[1] += tok
            t[2] += cost
            t[3] += err
    ranked = sorted(totals.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))[:TOP]
    return [{"name": name, "requests": req, "tokens": tok, "cost_micros": cost, "cost_usd": cost / 1e6,
             "errors": err} for name, (req, tok, cost, err) in ranked]


def usage_summary(*, days: int = DAYS, consumer: str | None = None, now: datetime | None = None) -> Summary:
    """Requests, tokens, cost, errors and failovers per day (UTC) and the top consumers, models, providers.

    Days that closed more than ROLLUP_DELAY ago come from the DailyUsage rollup (a few
    hundred rows); the rest (today, and yesterday for a while) from the audit log's
    time index. One consumer's view reads that consumer's events (its own index).
    """
    now = now or timezone.now()
    since, until, start = window_bounds(days, now)
    if consumer:
        rows = live_rows(start, None, consumer)
    else:
        last_closed = last_closed_day(now, until)
        live_from = max(start, midnight(last_closed + timedelta(days=1)))
        rows = rolled_up_rows(since=since, until=last_closed) + live_rows(live_from, None, None)
    by_day: dict[date, Day] = {}
    for dim, _, day, req, tok, cost, err, fail in rows:
        if dim == "total":
            d = by_day.setdefault(day, Day(day))
            d.requests += req
            d.tokens += tok
            d.cost_micros += cost
            d.errors += err
            d.failovers += fail
    day_list = [by_day.get(since + timedelta(days=i)) or Day(since + timedelta(days=i)) for i in range(days)]
    consumers = [] if consumer else _top(rows, "consumer")
    consumer_days: dict[str, list[int]] = {}
    if consumers:
        index = {d.day: i for i, d in enumerate(day_list)}
        top = {c["name"] for c in consumers}
        for dim, name, day, _, tok, *_rest in rows:
            if dim == "consumer" and (name or "(none)") in top and day in index:
                consumer_days.setdefault(name or "(none)", [0] * days)[index[day]] += tok
        named = [sum(values[i] for values in consumer_days.values()) for i in range(days)]
        others = [max(0, d.tokens - named[i]) for i, d in enumerate(day_list)]
        if any(others):
            consumer_days["others"] = others
    return Summary(
        since=since, until=until, days=day_list, consumers=consumers, consumer_days=consumer_days,
        models=_top(rows, "model"), providers=_top(rows, "provider"),
    )
