"""The admin's usage dashboard: 30 days of audit events as server-drawn SVG charts (docs/admin.md).

Closed days never change: each is added up once into budgets.DailyUsage (one
GROUP BY per dimension over that day's events), so a load reads a few hundred
rollup rows plus today's events through the audit log's time index
(see `usage_summary`; measured in tests/admin_portal/bench_dashboard.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from celery import shared_task
from django.contrib import admin
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import Count, F, FloatField, Q, Sum
from django.db.models.functions import Cast, Coalesce, TruncDate
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from audit.models import AuditEvent
from audit.permissions import is_audit_reader

logger = logging.getLogger(__name__)

DAYS = 30
# A day is rolled up this long after it ends, so that requests that began before midnight are in it.
ROLLUP_DELAY = timedelta(hours=1)
TOP = 8
PALETTE = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f", "#9e9d24", "#5d4037", "#9e9e9e")
_ERROR = Q(status__gte=400) | Q(status__isnull=True) | ~Q(error_class="")
_TOKENS = Coalesce(F("prompt_tokens"), 0) + Coalesce(F("completion_tokens"), 0)


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
    nearest_budgets: list[dict] = field(default_factory=list)

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


def _bounds(days: int, now: datetime) -> tuple[date, date, datetime]:
    until = now.astimezone(UTC).date()
    since = until - timedelta(days=days - 1)
    return since, until, _midnight(since)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


_COLUMNS = {"total": None, "consumer": "consumer_name", "provider": "provider", "model": "upstream_model"}


def _live(start: datetime, end: datetime | None, consumer: str | None) -> list[tuple]:
    """(dimension, name, day, requests, tokens, cost_micros, errors, failovers) from the audit log itself."""
    events = AuditEvent.objects.filter(time__gte=start)
    if end is not None:
        events = events.filter(time__lt=end)
    if consumer:
        events = events.filter(consumer_name=consumer)
    events = events.annotate(day=TruncDate("time", tzinfo=UTC))
    rows = []
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
    from audit.models import DailyUsage

    rows = [DailyUsage(day=day, dimension=dim, name=(name or "")[:200], requests=req, tokens=tok, cost_micros=cost,
                       errors=err, failovers=fail)
            for dim, name, _, req, tok, cost, err, fail in _live(_midnight(day), _midnight(day + timedelta(days=1)),
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


def _rolled_up(since: date, last_closed: date) -> list[tuple]:
    """Closed days from the rollup, rolling up (once) any day that is missing."""
    from audit.models import DailyUsage

    if last_closed < since:
        return []
    done = set(DailyUsage.objects.filter(dimension="total", day__gte=since, day__lte=last_closed)
               .values_list("day", flat=True))
    day = since
    while day <= last_closed:
        if day not in done:
            usage_rollup_day(day=day)
        day += timedelta(days=1)
    return list(DailyUsage.objects.filter(day__gte=since, day__lte=last_closed)
                .values_list("dimension", "name", "day", "requests", "tokens", "cost_micros", "errors", "failovers"))


def _sum(rows: list[tuple], dimension: str) -> list[dict]:
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


def nearest_budgets(*, now: datetime | None = None, limit: int = 10) -> list[dict]:
    """Budgets in their current window, by share used (database copy), highest first."""
    from budgets.models import BudgetUsage, format_amount

    now = now or timezone.now()
    rows = (BudgetUsage.objects.filter(starts_at__lte=now, ends_at__gt=now, budget__enabled=True,
                                       budget__limit__gt=0)
            .annotate(share=Cast(F("used"), FloatField()) / Cast(F("budget__limit"), FloatField()))
            .select_related("budget__consumer", "budget__key__consumer")
            .order_by("-share")[:limit])
    result = []
    for usage in rows:
        budget = usage.budget
        owner = budget.consumer or (budget.key.consumer if budget.key_id else None)
        result.append({
            "consumer": owner.name if owner else "?", "consumer_id": owner.pk if owner else None,
            "scope": f"key {budget.key.prefix}" if budget.key_id else "consumer",
            "metric": budget.metric, "period": budget.period, "used": usage.used, "limit": budget.limit,
            "percent": round(100 * usage.used / budget.limit, 1),
            "used_display": format_amount(budget.metric, usage.used),
            "limit_display": format_amount(budget.metric, budget.limit),
        })
    return result


def usage_summary(*, days: int = DAYS, consumer: str | None = None, now: datetime | None = None) -> Summary:
    """Requests, tokens, cost, errors and failovers per day (UTC) and the top consumers, models, providers.

    Days that closed more than ROLLUP_DELAY ago come from the DailyUsage rollup (a few
    hundred rows); the rest (today, and yesterday for a while) from the audit log's
    time index. One consumer's view reads that consumer's events (its own index).
    """
    now = now or timezone.now()
    since, until, start = _bounds(days, now)
    if consumer:
        rows = _live(start, None, consumer)
    else:
        last_closed = (now - ROLLUP_DELAY).astimezone(UTC).date() - timedelta(days=1)
        last_closed = min(last_closed, until - timedelta(days=1))
        live_from = max(start, _midnight(last_closed + timedelta(days=1)))
        rows = _rolled_up(since, last_closed) + _live(live_from, None, None)
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
    consumers = [] if consumer else _sum(rows, "consumer")
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
        models=_sum(rows, "model"), providers=_sum(rows, "provider"),
        nearest_budgets=[] if consumer else nearest_budgets(now=now),
    )


def cached_usage_summary(*, days: int = DAYS, consumer: str | None = None, max_age: int = 30) -> Summary:
    """usage_summary, kept `max_age` seconds in the shared cache (several admins, one computation)."""
    key = f"dashboard:v1:{days}:{consumer or ''}"
    try:
        summary = cache.get(key)
    except Exception:
        summary = None
    if summary is None:
        summary = usage_summary(days=days, consumer=consumer)
        try:
            cache.set(key, summary, timeout=max_age)
        except Exception:
            logger.warning("could not cache the dashboard", exc_info=True)
    return summary


# --- SVG, drawn here so that nothing is loaded from elsewhere ------------------------------


def _fmt(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != int(value) else f"{int(value)}"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1) if value >= 1 else 1
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def svg_columns(title: str, labels: list[str], series: dict[str, list[float]], *, stacked: bool = True,
                width: int = 560, height: int = 220, unit: str = "",
                colours: tuple[str, ...] = PALETTE) -> SafeString:
    """A column chart (stacked series per label), with an axis, a legend and a tooltip per column."""
    left, right, top, bottom = 48, 8, 24, 36
    plot_w, plot_h = width - left - right, height - top - bottom
    names = list(series)
    totals = [sum(series[n][i] for n in names) for i in range(len(labels))] if stacked else \
        [max((series[n][i] for n in names), default=0) for i in range(len(labels))]
    peak = _nice_max(max(totals, default=0))
    slot = plot_w / max(1, len(labels))
    bar_w = max(1.0, slot * (0.8 if stacked else 0.8 / max(1, len(names))))
    parts = [f'<svg class="tg-chart" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet">',
             f'<text x="{left}" y="14" class="tg-chart-title">{escape(title)}</text>']
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="tg-grid"/>'
                     f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="tg-axis">'
                     f'{_fmt(peak * i / 4)}{escape(unit)}</text>')
    for i, label in enumerate(labels):
        x0 = left + slot * i + slot * 0.1
        base = 0.0
        for n, name in enumerate(names):
            value = series[name][i]
            if value <= 0:
                continue
            h = plot_h * value / peak
            x = x0 if stacked else x0 + n * bar_w
            y = top + plot_h - (base + h if stacked else h)
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                         f'fill="{colours[n % len(colours)]}"><title>{escape(label)} {escape(name)}: '
                         f'{_fmt(value)}{escape(unit)}</title></rect>')
            if stacked:
                base += h
        if i % max(1, len(labels) // 6) == 0:
            parts.append(f'<text x="{x0 + bar_w / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle" '
                         f'class="tg-axis">{escape(label)}</text>')
    if len(names) > 1:
        x = left
        for n, name in enumerate(names):
            parts.append(f'<rect x="{x}" y="{height - 12}" width="10" height="10" '
                         f'fill="{colours[n % len(colours)]}"/><text x="{x + 14}" y="{height - 3}" '
                         f'class="tg-axis">{escape(name[:18])}</text>')
            x += 22 + 7 * min(18, len(name))
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- every label above is escaped


def svg_bars(title: str, items: list[tuple[str, float, str]], *, width: int = 560) -> SafeString:
    """Horizontal bars: (label, value, value as text) per row, longest first."""
    row_h, label_w = 22, 170
    height = 24 + row_h * max(1, len(items))
    peak = max((v for _, v, _ in items), default=0) or 1
    parts = [f'<svg class="tg-chart" role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet">',
             f'<text x="0" y="14" class="tg-chart-title">{escape(title)}</text>']
    if not items:
        parts.append('<text x="0" y="38" class="tg-axis">No requests in the period.</text>')
    for i, (label, value, text) in enumerate(items):
        y = 24 + i * row_h
        w = (width - label_w - 90) * value / peak
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" class="tg-axis">'
                     f'{escape(label[:28])}</text><rect x="{label_w}" y="{y + 3}" width="{max(w, 1):.1f}" '
                     f'height="{row_h - 6}" fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(label)}: '
                     f'{escape(text)}</title></rect><text x="{label_w + w + 6:.1f}" y="{y + 14}" '
                     f'class="tg-axis">{escape(text)}</text>')
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 -- every label above is escaped


def _charts(summary: Summary) -> dict[str, SafeString]:
    labels = [f"{d.day:%m-%d}" for d in summary.days]
    return {
        "tokens": svg_columns("Tokens per day, by consumer", labels,
                              summary.consumer_days or {"tokens": [d.tokens for d in summary.days]}),
        "cost": svg_columns("Cost per day (USD)", labels, {"cost": [d.cost_micros / 1e6 for d in summary.days]},
                            unit=""),
        "requests": svg_columns("Requests per day (errors in red)", labels, {
            "answered": [d.requests - d.errors for d in summary.days],
            "errors": [d.errors for d in summary.days]}, colours=("#1565c0", "#c62828")),
        "rates": svg_columns("Error and failover rate per day (%)", labels, {
            "errors %": [100 * d.errors / d.requests if d.requests else 0 for d in summary.days],
            "failovers %": [100 * d.failovers / d.requests if d.requests else 0 for d in summary.days]},
            stacked=False, unit="%", colours=("#c62828", "#ef6c00")),
        "models": svg_bars("Top upstream models (tokens)", [
            (m["name"], m["tokens"], f"{_fmt(m['tokens'])} tok, {_fmt(m['requests'])} req") for m in summary.models]),
        "providers": svg_bars("Top providers (requests)", [
            (p["name"], p["requests"], f"{_fmt(p['requests'])} req, {_fmt(p['errors'])} err")
            for p in sorted(summary.providers, key=lambda p: -p["requests"])]),
    }


def dashboard_view(request: HttpRequest) -> HttpResponse:
    """Sync view behind admin.site.admin_view; gateway-admin and compliance (audit readers) only."""
    if not is_audit_reader(request.user):
        raise PermissionDenied
    consumer = request.GET.get("consumer") or None
    summary = cached_usage_summary(consumer=consumer)
    totals = summary.totals
    context = {
        **admin.site.each_context(request),
        "title": f"Usage dashboard{f': {consumer}' if consumer else ''}",
        "summary": summary,
        "totals": totals,
        "cost_usd": totals.cost_micros / 1e6,
        "error_rate": 100 * totals.errors / totals.requests if totals.requests else 0.0,
        "failover_rate": 100 * totals.failovers / totals.requests if totals.requests else 0.0,
        "charts": _charts(summary),
        "consumer": consumer,
    }
    return TemplateResponse(request, "admin/dashboard.html", context)


@shared_task(time_limit=1800, soft_time_limit=1700)
def usage_rollup(days: int = DAYS) -> int:
    """Celery beat: roll up the closed days of the dashboard's window that are missing (usually none)."""
    now = timezone.now()
    since, until, _ = _bounds(days, now)
    last_closed = min((now - ROLLUP_DELAY).astimezone(UTC).date() - timedelta(days=1), until - timedelta(days=1))
    from audit.models import DailyUsage

    done = set(DailyUsage.objects.filter(dimension="total", day__gte=since, day__lte=last_closed)
               .values_list("day", flat=True))
    missing = [since + timedelta(days=i) for i in range((last_closed - since).days + 1)
               if since + timedelta(days=i) not in done]
    for day in missing:
        usage_rollup_day(day=day)
    return len(missing)
