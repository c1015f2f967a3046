"""Admission and settlement: what the proxy calls before and after the upstream call (docs/budgets.md).

budget_reserve holds a request's worst case against its budgets and rate limits;
budget_settle charges what it really used and releases the holds, also after failures
and disconnects. Counters change only by atomic operations: Redis Lua scripts when
Redis is configured (budgets.counters), else conditional UPDATEs checked by row count and
the in-process cache (budgets.fallback). This module only decides which, and in what order.
"""
from __future__ import annotations

import logging
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from budgets import counters, fallback
from budgets.alerts import budget_alerts_queue
from budgets.holds import Admission, Hold, LimitExceeded, TokenHold
from budgets.periods import window_at
from budgets.selectors import KeyInfo, Limits
from budgets.usage import usage_mirror, usage_mirror_write
from gateway_site.lib.db import run_db

logger = logging.getLogger("tollgate.budgets")


def _budget_amount(metric: str, *, tokens: int, cost: int) -> int:
    if metric == "tokens":
        return tokens
    if metric == "requests":
        return 1
    return cost


async def budget_reserve(
    *, key: KeyInfo, limits: Limits, request_id: str, tokens: int, cost: int, now: datetime | None = None,
) -> Admission:
    """Admit a request against its rate limits and budgets, holding its worst case.

    `tokens` is the request's worst case (prompt estimate + max tokens), `cost` the
    same in micro-dollars; `limits` are those of the request's route (limits_for_key(route=...)):
    the key's, its consumer's and its team's budgets are held together, all or none.
    Raises LimitExceeded (nothing stays held) or LimitsUnavailable.
    """
    now = now or timezone.now()
    admission = Admission(request_id=request_id, consumer_id=key.consumer_id, key_id=key.key_id, now=now,
                          team_id=key.team_id)
    request_rules = [r for r in limits.rates if r.requests is not None]
    if request_rules and not counters.enabled():
        fallback.request_rates_check(request_rules, admission)  # in-process cache: no I/O
    for rule in limits.budgets:
        window = window_at(rule.period, rule.timezone, now)
        amount = _budget_amount(rule.metric, tokens=tokens, cost=cost) if rule.hard else 0
        admission.holds.append(Hold(rule=rule, window=window, amount=amount))
    now_ts = now.timestamp()
    for rate in limits.rates:
        if rate.tokens is None:
            continue
        index = int(now_ts // rate.window_seconds)
        admission.token_holds.append(TokenHold(
            rule=rate,
            key=counters.token_window_key(admission.slot, rate.id, admission.owner_value(rate.owner), index),
            amount=tokens,
            resets_in=int((index + 1) * rate.window_seconds - now_ts + 0.999),
        ))
    if counters.enabled():
        if admission.holds or admission.token_holds or request_rules:
            await counters.reserve(admission, now, request_rules)
        return admission
    if admission.holds or admission.token_holds:
        fallback.token_windows_reserve(admission)
        try:
            await run_db(fallback.budgets_reserve, admission, now)
        except LimitExceeded:
            fallback.token_windows_release(admission)
            raise
    return admission


async def budget_settle(
    *, admission: Admission, prompt_tokens: int, completion_tokens: int, requests: int, cost: int,
) -> None:
    """Charge what the request really used and release its holds. Never raises."""
    if admission.settled or admission.refused:
        return
    admission.settled = True
    tokens = prompt_tokens + completion_tokens
    charges = [_budget_amount(h.rule.metric, tokens=tokens, cost=cost) if h.rule.metric != "requests"
               else requests for h in admission.holds]
    try:
        if counters.enabled():
            await counters.settle(admission, charges, tokens)
            if settings.TOLLGATE_BUDGET_MIRROR_SECONDS > 0:
                for hold, charge in zip(admission.holds, charges, strict=True):
                    if charge:
                        usage_mirror.add(hold, charge)
            else:
                await run_db(usage_mirror_write, admission, charges)
        else:
            fallback.token_windows_settle(admission, tokens)
            await run_db(fallback.budgets_settle, admission, charges)
    except Exception:
        # The holds expire by themselves; the charge is lost only from the counters.
        logger.exception("request %s: settling budgets failed", admission.request_id)
        return
    await budget_alerts_queue(admission=admission)


def budget_admit_unmetered(*, key: KeyInfo, limits: Limits, request_id: str,
                           now: datetime | None = None) -> Admission:
    """Fail open: an admission that holds nothing but still charges the request when it settles."""
    now = now or timezone.now()
    admission = Admission(request_id=request_id, consumer_id=key.consumer_id, key_id=key.key_id,
                          metered=False, now=now, team_id=key.team_id)
    for rule in limits.budgets:
        admission.holds.append(Hold(rule=rule, window=window_at(rule.period, rule.timezone, now), amount=0))
    return admission
