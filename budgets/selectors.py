"""Reads of consumers and keys used on the request path."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from budgets import counters
from budgets.binding import ClientBinding, binding_build
from budgets.holds import BudgetRule, RateRule
from budgets.models import ApiKey, Budget, BudgetUsage, Consumer, ModelPrice, RateLimit
from budgets.periods import window_at
from budgets.signals import limits_cache, price_cache
from gateway_site.lib.db import run_db


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the gateway needs to know about a key, cached per worker."""

    key_id: int
    prefix: str
    consumer_id: int
    consumer_name: str
    consumer_active: bool
    expires_at: datetime | None
    revoked: bool
    allowed_routes: frozenset[str] | None  # None: every route
    # The networks and User-Agents the key and its consumer are bound to, parsed; None: any.
    binding: ClientBinding | None = None


def key_info_by_digest(digest: str) -> KeyInfo | None:
    """Sync: call it off the event loop (the proxy uses gateway_site.lib.db.run_db)."""
    key = ApiKey.objects.select_related("consumer").filter(digest=digest).first()
    if key is None:
        return None
    consumer = key.consumer
    return KeyInfo(
        key_id=key.pk,
        prefix=key.prefix,
        consumer_id=key.consumer_id,
        consumer_name=consumer.name,
        consumer_active=consumer.active,
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
        allowed_routes=frozenset(key.allowed_routes) if key.allowed_routes else None,
        binding=binding_build(owner=f"key {key.prefix} of {consumer.name}",
                              networks=[consumer.allowed_networks or [], key.allowed_networks or []],
                              user_agents=[consumer.allowed_user_agents or [], key.allowed_user_agents or []]),
    )


# --- Budgets, rate limits and prices, cached per worker -----------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Everything that limits one key: its own and its consumer's budgets and rate limits."""

    budgets: tuple[BudgetRule, ...] = ()
    rates: tuple[RateRule, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.budgets and not self.rates

    @property
    def needs_cost(self) -> bool:
        return any(b.metric == "cost_usd" for b in self.budgets)


NO_LIMITS = Limits()


def _load_limits(consumer_id: int, key_id: int) -> Limits:
    owner = Q(consumer_id=consumer_id) | Q(key_id=key_id)
    budgets = tuple(
        BudgetRule(id=b.pk, metric=b.metric, limit=b.limit, period=b.period, timezone=b.timezone,
                   hard=b.mode == "hard", alert_at_percent=b.alert_at_percent,
                   owner="key" if b.key_id else "consumer")
        for b in Budget.objects.filter(owner, enabled=True).order_by("id")
    )
    rates = tuple(
        RateRule(id=r.pk, requests=r.requests, tokens=r.tokens, window_seconds=r.window_seconds,
                 rejected_code=r.rejected_code, rejected_msg=r.rejected_msg,
                 owner="key" if r.key_id else "consumer")
        for r in RateLimit.objects.filter(owner, enabled=True).order_by("id")
    )
    return Limits(budgets, rates) if budgets or rates else NO_LIMITS


async def limits_for_key(key: KeyInfo) -> Limits:
    """The key's limits from this worker's memory; one database round trip on a miss."""
    return await limits_cache.aget_or_load((key.consumer_id, key.key_id),
                                           lambda: run_db(_load_limits, key.consumer_id, key.key_id))


class PriceTable:
    """Current prices (micro-dollars per million tokens) by upstream model name."""

    def __init__(self, prices: dict[str, tuple[int, int]]) -> None:
        self._prices = prices
        self._resolved: dict[str, tuple[int, int] | None] = {}

    def lookup(self, model: str) -> tuple[int, int] | None:
        """Exact name first, then the longest priced name it extends (gpt-4o-2024-08-06 -> gpt-4o)."""
        try:
            return self._resolved[model]
        except KeyError:
            pass
        name = model.removeprefix("models/")  # Gemini's resource names
        found = self._prices.get(name)
        if found is None:
            best = ""
            for priced in self._prices:
                if len(priced) > len(best) and name.startswith(priced) and name[len(priced)] in "-@:":
                    best = priced
            found = self._prices.get(best) if best else None
        if len(self._resolved) < 10_000:
            self._resolved[model] = found
        return found

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> int | None:
        """Micro-dollars, rounded up; None when the model has no price."""
        price = self.lookup(model)
        if price is None:
            return None
        return -(-(prompt_tokens * price[0] + completion_tokens * price[1]) // 1_000_000)


def _load_prices(now: datetime | None = None) -> PriceTable:
    now = now or timezone.now()
    prices: dict[str, tuple[int, int]] = {}
    # Latest valid_from first: the first row seen for a model is its current price.
    for row in ModelPrice.objects.filter(valid_from__lte=now).order_by("model", "-valid_from"):
        prices.setdefault(row.model, (row.input_per_million, row.output_per_million))
    return PriceTable(prices)


async def price_table() -> PriceTable:
    return await price_cache.aget_or_load("table", lambda: run_db(_load_prices))


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

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used - self.reserved)


def budget_usage_report(*, consumer: Consumer, now: datetime | None = None) -> list[BudgetUsageRow]:
    """Each budget of the consumer and its keys in the current period: limit, used, reserved.

    With Redis, the live counters there are read (the database copy trails them by at
    most the requests being settled); without it, the database rows.
    """
    now = now or timezone.now()
    redis_client = None
    if settings.REDIS_URL:
        redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    rows = []
    budgets = Budget.objects.filter(Q(consumer=consumer) | Q(key__consumer=consumer)).select_related("key")
    for budget in budgets.order_by("id"):
        window = window_at(budget.period, budget.timezone, now)
        usage = BudgetUsage.objects.filter(budget=budget, period_start=window.period_start).first()
        used = usage.used if usage else 0
        reserved = usage.reserved if usage else 0
        if redis_client is not None:
            try:
                live_used, live_reserved = redis_client.hmget(
                    counters.budget_keys(budget.pk, window.period_start)[0], "used", "reserved")
            except Exception:
                live_used = live_reserved = None
            if live_used is not None:
                used = max(used, int(live_used))
                reserved = int(live_reserved or 0)
        rows.append(BudgetUsageRow(
            budget_id=budget.pk, owner=f"key {budget.key.prefix}" if budget.key_id else "consumer",
            metric=budget.metric, mode=budget.mode, period=budget.period, timezone=budget.timezone,
            period_start=window.period_start, resets_at=window.ends_at, limit=budget.limit, used=used,
            reserved=reserved,
        ))
    return rows
