"""The admin's usage dashboard: 30 days of audit events as server-drawn SVG charts (docs/admin.md).

The roof only composes it: usage per day and the top consumers, models and providers
come from the audit log (audit.selectors.usage_summary, over its daily rollup), the
budgets nearest to their limits from budgets (budgets.selectors.nearest_budgets).
Drawing the charts and serving the admin page happen here.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from django.contrib import admin
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from audit.permissions import is_audit_reader
from audit.selectors import DAYS, Summary, usage_summary
from budgets.selectors import nearest_budgets

logger = logging.getLogger(__name__)

PALETTE = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f", "#9e9d24", "#5d4037", "#9e9e9e")


@dataclass
class Dashboard:
    """What the page shows: the audit log's usage summary and, for all consumers, the nearest budgets."""

    summary: Summary
    nearest_budgets: list[dict]


def dashboard_compose(*, days: int = DAYS, consumer: str | None = None) -> Dashboard:
    now = timezone.now()
    return Dashboard(
        summary=usage_summary(days=days, consumer=consumer, now=now),
        nearest_budgets=[] if consumer else nearest_budgets(now=now),
    )


def cached_dashboard(*, days: int = DAYS, consumer: str | None = None, max_age: int = 30) -> Dashboard:
    """dashboard_compose, kept `max_age` seconds in the shared cache (several admins, one computation)."""
    key = f"dashboard:v2:{days}:{consumer or ''}"
    try:
        dashboard = cache.get(key)
    except Exception:
        dashboard = None
    if dashboard is None:
        dashboard = dashboard_compose(days=days, consumer=consumer)
        try:
            cache.set(key, dashboard, timeout=max_age)
        except Exception:
            logger.warning("could not cache the dashboard", exc_info=True)
    return dashboard


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


def svg_columns(title: str, labels: list[str], series: Mapping[str, Sequence[float]], *, stacked: bool = True,
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
    dashboard = cached_dashboard(consumer=consumer)
    summary = dashboard.summary
    totals = summary.totals
    context = {
        **admin.site.each_context(request),
        "title": f"Usage dashboard{f': {consumer}' if consumer else ''}",
        "summary": summary,
        "nearest_budgets": dashboard.nearest_budgets,
        "totals": totals,
        "cost_usd": totals.cost_micros / 1e6,
        "error_rate": 100 * totals.errors / totals.requests if totals.requests else 0.0,
        "failover_rate": 100 * totals.failovers / totals.requests if totals.requests else 0.0,
        "charts": _charts(summary),
        "consumer": consumer,
    }
    return TemplateResponse(request, "admin/dashboard.html", context)
