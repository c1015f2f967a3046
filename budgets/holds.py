"""A request's limits and what it holds against them, and how a refusal reads.

The rules (a budget, a rate limit, as the request path sees them), the Admission that
budget_reserve returns with its holds, and the two refusals. They sit below every
module of admission (the Redis side in budgets.counters, the database side in
budgets.fallback, the usage mirror, alerts, and budgets.admission which orders them),
because each of those reads them: kept in budgets.admission, they would make it and
the modules it calls import each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from budgets.models import format_amount
from budgets.periods import Window


@dataclass(frozen=True, slots=True)
class BudgetRule:
    id: int
    metric: str  # tokens | requests | cost_usd
    limit: int
    period: str
    timezone: str
    hard: bool
    alert_at_percent: int | None
    owner: str  # "team", "consumer" or "key"
    # The routes (models) whose requests it counts; None: every route. The proxy drops the
    # others from a request's limits before admission (selectors.Limits.for_route).
    routes: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class RateRule:
    id: int
    requests: int | None
    tokens: int | None
    window_seconds: int
    rejected_code: int
    rejected_msg: str
    owner: str

    @property
    def ratelimit_group(self) -> str:
        """django-ratelimit's group for this rule's request counters (with or without Redis)."""
        return f"tollgate.ratelimit.{self.id}"


class LimitExceeded(Exception):
    """A budget or rate limit refuses the request; the message names the limit."""

    def __init__(self, message: str, *, code: str, status: int, retry_after: int, admission: Admission) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retry_after = retry_after
        self.admission = admission


class LimitsUnavailable(Exception):
    """The shared counters (Redis) cannot be reached, so limits cannot be checked.

    `failover`: a Cluster or Sentinel master is (probably) being replaced; the request is
    refused even when failing open (budgets.counters._Outage)."""

    def __init__(self, message: str, *, failover: bool = False) -> None:
        super().__init__(message)
        self.failover = failover


@dataclass(slots=True)
class Hold:
    """A request's part in one budget window: what it reserved and the window's total after it."""

    rule: BudgetRule
    window: Window
    amount: int
    total: int = 0  # used + reserved, after the last operation

    @property
    def held(self) -> bool:
        return self.rule.hard and self.amount > 0


@dataclass(slots=True)
class TokenHold:
    rule: RateRule
    key: str
    amount: int
    count: int = 0
    resets_in: int = 0


@dataclass(slots=True)
class Admission:
    """What budget_reserve admitted, for budget_settle and the x-ratelimit-* headers."""

    request_id: str
    consumer_id: int
    key_id: int
    holds: list[Hold] = field(default_factory=list)
    token_holds: list[TokenHold] = field(default_factory=list)
    # (limit, remaining, seconds to reset) of each request-rate limit
    request_rates: list[tuple[int, int, int]] = field(default_factory=list)
    metered: bool = True  # False: admitted unmetered while Redis was unreachable (fail open)
    refused: bool = False
    settled: bool = False
    now: datetime | None = None
    team_id: int | None = None  # the consumer's team, when it has one

    @property
    def slot(self) -> str:
        """The hash tag every Redis key of this admission carries, so that on a Redis Cluster
        one script touches one slot: the team's when the consumer is in one, else the consumer's."""
        return redis_slot(consumer_id=self.consumer_id, team_id=self.team_id)

    def owner_value(self, owner: str) -> str:
        """The counter key part of a rule's owner: this key, this consumer or its team."""
        if owner == "key":
            return f"k{self.key_id}"
        if owner == "team" and self.team_id is not None:
            return f"t{self.team_id}"
        return f"c{self.consumer_id}"

    def headers(self) -> dict[str, str]:
        """x-ratelimit-* for the tightest requests limit and the tightest tokens limit."""
        now = self.now or timezone.now()
        requests = list(self.request_rates)
        tokens = [(t.rule.tokens or 0, (t.rule.tokens or 0) - t.count, t.resets_in) for t in self.token_holds]
        for hold in self.holds:
            if not hold.rule.hard:
                continue
            entry = (hold.rule.limit, hold.rule.limit - hold.total, hold.window.seconds_left(now))
            if hold.rule.metric == "requests":
                requests.append(entry)
            elif hold.rule.metric == "tokens":
                tokens.append(entry)
        headers: dict[str, str] = {}
        for kind, entries in (("requests", requests), ("tokens", tokens)):
            if entries:
                limit, remaining, reset = min(entries, key=lambda e: e[1])
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining))
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(reset)
        return headers


def redis_slot(*, consumer_id: int, team_id: int | None = None) -> str:
    """The Redis Cluster hash tag of a consumer's admissions: its team's when it has one, else its own.
    Every reader of a budget's counters derives the tag here (budgets.counters.budget_slot)."""
    return f"t{team_id}" if team_id is not None else f"c{consumer_id}"


def format_duration(seconds: int) -> str:
    """OpenAI's style for x-ratelimit-reset-*: 0s, 17s, 6m0s, 1h2m3s."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


# --- Refusals: built where the counter said no (Redis, database or process cache) ------------


def _owner_word(owner: str) -> str:
    return {"key": "API key", "team": "team"}.get(owner, "consumer")


def refuse_requests(rule: RateRule, reset: int, admission: Admission) -> LimitExceeded:
    admission.refused = True
    message = rule.rejected_msg or (
        f"Rate limit exceeded: this {_owner_word(rule.owner)} may send {rule.requests} requests "
        f"per {rule.window_seconds} seconds. Retry in {max(1, reset)} seconds."
    )
    return LimitExceeded(message, code="rate_limit_exceeded", status=rule.rejected_code,
                         retry_after=max(1, reset), admission=admission)


def refuse_budget(hold: Hold, total: int, admission: Admission) -> LimitExceeded:
    rule = hold.rule
    hold.total = total
    admission.refused = True
    now = admission.now or timezone.now()
    reset = hold.window.seconds_left(now)
    routes = ""
    if rule.routes:
        routes = f" for route{'s' if len(rule.routes) > 1 else ''} {', '.join(sorted(rule.routes))}"
    message = (
        f"Budget exceeded: this {_owner_word(rule.owner)}'s {rule.metric} budget of "
        f"{format_amount(rule.metric, rule.limit)} per {rule.period} ({rule.timezone}){routes} has "
        f"{format_amount(rule.metric, max(0, rule.limit - total))} left, and this request may use up to "
        f"{format_amount(rule.metric, hold.amount)}. The budget resets at "
        f"{hold.window.ends_at.isoformat()}."
    )
    return LimitExceeded(message, code="budget_exceeded", status=429, retry_after=max(1, reset),
                         admission=admission)


def refuse_tokens(token_hold: TokenHold, count: int, admission: Admission) -> LimitExceeded:
    rule = token_hold.rule
    token_hold.count = count
    admission.refused = True
    message = rule.rejected_msg or (
        f"Rate limit exceeded: this {_owner_word(rule.owner)} may use {rule.tokens} tokens per "
        f"{rule.window_seconds} seconds; {max(0, (rule.tokens or 0) - count)} are left in this window and "
        f"this request may use up to {token_hold.amount} (prompt estimate plus max_tokens). "
        f"Retry in {max(1, token_hold.resets_in)} seconds."
    )
    return LimitExceeded(message, code="rate_limit_exceeded", status=rule.rejected_code,
                         retry_after=max(1, token_hold.resets_in), admission=admission)
