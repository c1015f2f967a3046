"""Reads of consumers and keys used on the request path."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Q
from django.utils import timezone

from budgets import counters
from budgets.binding import ClientBinding, binding_build
from budgets.holds import BudgetRule, RateRule
from budgets.models import ApiKey, Budget, BudgetUsage, Consumer, RateLimit, Team
from budgets.periods import window_at
from budgets.signals import limits_cache
from gateway_site.lib import redisclient
from gateway_site.lib.db import run_db


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the gateway needs to know about a key, cached per worker."""

    key_id: int
    prefix: str
    consumer_id: int
    consumer_name: str
    consumer_active: bool  # False also when the consumer's team is inactive
    expires_at: datetime | None
    revoked: bool
    allowed_routes: frozenset[str] | None  # None: every route
    # The consumer's audit body mode, so the audit record gets it with the request;
    # None: TOLLGATE_AUDIT_DEFAULT_BODY_MODE. A consumer change drops the entry.
    audit_body_mode: str | None = None
    # The networks and User-Agents the key and its consumer are bound to, parsed; None: any.
    binding: ClientBinding | None = None
    # The consumer's team, whose budgets its requests hold too; None: no team. A consumer
    # change (joining or leaving a team) or a team change drops the entry.
    team_id: int | None = None


def key_info_by_digest(digest: str) -> KeyInfo | None:
    """Sync: call it off the event loop (the proxy uses gateway_site.lib.db.run_db)."""
    key = ApiKey.objects.select_related("consumer__team").filter(digest=digest).first()
    if key is None:
        return None
    consumer = key.consumer
    team = consumer.team
    return KeyInfo(
        key_id=key.pk,
        prefix=key.prefix,
        consumer_id=key.consumer_id,
        consumer_name=consumer.name,
        consumer_active=consumer.active and (team is None or team.active),
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
        allowed_routes=frozenset(key.allowed_routes) if key.allowed_routes else None,
        audit_body_mode=key.consumer.audit_body_mode,
        binding=binding_build(owner=f"key {key.prefix} of {consumer.name}",
                              networks=[consumer.allowed_networks or [], key.allowed_networks or []],
                              user_agents=[consumer.allowed_user_agents or [], key.allowed_user_agents or []]),
        team_id=consumer.team_id,
    )


# --- Budgets and rate limits, cached per worker (prices: budgets/pricing.py) -------


@dataclass(frozen=True, slots=True)
class Limits:
    """Everything that limits one key: its own, its consumer's and its team's budgets, and its
    own and its consumer's rate limits."""

    budgets: tuple[BudgetRule, ...] = ()
    rates: tuple[RateRule, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.budgets and not self.rates

    def for_route(self, route: str) -> Limits:
        """The limits of a request on `route`: without the budgets scoped to other routes.
        In memory, so the cached entry serves every route of the key."""
        if all(b.routes is None or route in b.routes for b in self.budgets):
            return self
        budgets = tuple(b for b in self.budgets if b.routes is None or route in b.routes)
        return Limits(budgets, self.rates) if budgets or self.rates else NO_LIMITS

    @property
    def needs_cost(self) -> bool:
        return any(b.metric == "cost_usd" for b in self.budgets)


NO_LIMITS = Limits()


def _load_limits(consumer_id: int, key_id: int, team_id: int | None) -> Limits:
    owner = Q(consumer_id=consumer_id) | Q(key_id=key_id)
    budget_owner = owner | Q(team_id=team_id) if team_id is not None else owner
    # By id: every request takes its budgets' rows in the same order (the database counters
    # lock them one after the other in one transaction; no two requests wait on each other).
    budgets = tuple(
        BudgetRule(id=b.pk, metric=b.metric, limit=b.limit, period=b.period, timezone=b.timezone,
                   hard=b.mode == "hard", alert_at_percent=b.alert_at_percent, owner=b.owner_kind,
                   routes=frozenset(b.routes) if b.routes else None)
        for b in Budget.objects.filter(budget_owner, enabled=True).order_by("id")
    )
    rates = tuple(
        RateRule(id=r.pk, requests=r.requests, tokens=r.tokens, window_seconds=r.window_seconds,
                 rejected_code=r.rejected_code, rejected_msg=r.rejected_msg,
                 owner="key" if r.key_id else "consumer")
        for r in RateLimit.objects.filter(owner, enabled=True).order_by("id")
    )
    return Limits(budgets, rates) if budgets or rates else NO_LIMITS


async def limits_for_key(key: KeyInfo, *, route: str | None = None) -> Limits:
    """The key's limits from this worker's memory (one database round trip on a miss); with
    `route`, only the budgets that count requests on that route."""
    # The team is part of the cache key: an entry never mixes a consumer with a team it left.
    limits = await limits_cache.aget_or_load(
        (key.consumer_id, key.key_id, key.team_id),
        lambda: run_db(_load_limits, key.consumer_id, key.key_id, key.team_id))
    return limits if route is None else limits.for_route(route)


@dataclass(frozen=True)
class BudgetUsageRow:
    budget_id: int
    owner: str
    metric: str
    mode: str
    period: str
    timezone: str
    period_start: Any
    resets_at: datetime
    limit: int
    used: int
    reserved: int
    routes: tuple[str, ...] = ()  # empty: every route

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used - self.reserved)


def budget_usage_report(*, consumer: Consumer | None = None, team: Team | None = None,
                        now: datetime | None = None) -> list[BudgetUsageRow]:
    """Each budget in the current period (limit, used, reserved): a consumer's, its keys' and
    its team's (what its requests hold), or a team's own.

    With Redis, the live counters there are read (the database copy trails them by at
    most the requests being settled); without it, the database rows.
    """
    now = now or timezone.now()
    if consumer is not None:
        owners = Q(consumer=consumer) | Q(key__consumer=consumer)
        if consumer.team_id is not None:
            owners |= Q(team_id=consumer.team_id)
    elif team is not None:
        owners = Q(team=team)
    else:
        raise TypeError("budget_usage_report needs a consumer or a team")
    redis_client = redisclient.sync_client() if redisclient.configured() else None
    rows = []
    budgets = Budget.objects.filter(owners).select_related("key__consumer", "consumer", "team")
    for budget in budgets.order_by("id"):
        window = window_at(budget.period, budget.timezone, now)
        usage = BudgetUsage.objects.filter(budget=budget, period_start=window.period_start).first()
        used = usage.used if usage else 0
        reserved = usage.reserved if usage else 0
        if redis_client is not None:
            try:
                live_used, live_reserved = redis_client.hmget(
                    counters.budget_keys(counters.budget_slot(budget), budget.pk, window.period_start)[0],
                    "used", "reserved")
            except Exception:
                live_used = live_reserved = None
            if live_used is not None:
                used = max(used, int(live_used))
                reserved = int(live_reserved or 0)
        rows.append(BudgetUsageRow(
            budget_id=budget.pk, owner=budget.owner_display if budget.owner_kind != "consumer" else "consumer",
            metric=budget.metric, mode=budget.mode, period=budget.period, timezone=budget.timezone,
            period_start=window.period_start, resets_at=window.ends_at, limit=budget.limit, used=used,
            reserved=reserved, routes=tuple(budget.routes or ()),
        ))
    return rows


def nearest_budgets(*, now: datetime | None = None, limit: int = 10) -> list[dict]:
    """Budgets in their current window, by share used (database copy), highest first."""
    from django.db.models import F, FloatField
    from django.db.models.functions import Cast
    from django.utils import timezone

    from budgets.models import BudgetUsage, format_amount

    now = now or timezone.now()
    rows = (BudgetUsage.objects.filter(starts_at__lte=now, ends_at__gt=now, budget__enabled=True,
                                       budget__limit__gt=0)
            .annotate(share=Cast(F("used"), FloatField()) / Cast(F("budget__limit"), FloatField()))
            .select_related("budget__consumer", "budget__key__consumer", "budget__team")
            .order_by("-share")[:limit])
    result = []
    for usage in rows:
        budget = usage.budget
        key = budget.key
        owner = budget.consumer or (key.consumer if key is not None else None)
        scope = budget.owner_display if budget.owner_kind != "consumer" else "consumer"
        if budget.routes:
            scope += f" on {', '.join(budget.routes)}"
        result.append({
            # A team's budget has no consumer: the team's name stands there (not a link).
            "consumer": owner.name if owner else budget.owner_display, "consumer_id": owner.pk if owner else None,
            "scope": scope,
            "metric": budget.metric, "period": budget.period, "used": usage.used, "limit": budget.limit,
            "percent": round(100 * usage.used / budget.limit, 1),
            "used_display": format_amount(budget.metric, usage.used),
            "limit_display": format_amount(budget.metric, budget.limit),
        })
    return result
