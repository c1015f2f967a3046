"""Writes for budgets: admission, settlement, the reset job and alerts. Keyword-only, named <thing>_<action>."""
from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from types import SimpleNamespace

from django.conf import settings
from django.db import IntegrityError, connections, transaction
from django.db.models import F
from django.utils import timezone

from budgets import counters
from budgets.models import BudgetReservation, BudgetUsage, format_amount
from budgets.periods import Window, window_at
from budgets.selectors import BudgetRule, KeyInfo, Limits, RateRule
from gateway_site.lib.db import run_db
from gateway_site.lib.sharedcache import cache

# --- Budgets and rate limits: admission and settlement (docs/budgets.md) --------------
#
# The proxy calls budget_reserve before the upstream call and budget_settle once the
# request is over (also after failures and disconnects). Counters change only by
# atomic operations: Redis Lua scripts when REDIS_URL is set (budgets.counters), else
# conditional UPDATEs checked by row count. Request-rate limits are django-ratelimit's
# counters on the shared cache.

logger = logging.getLogger("tollgate.budgets")

_RATELIMIT_REQUEST = SimpleNamespace(method="POST")  # all django-ratelimit reads of the request


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
    """The shared counters (Redis) cannot be reached, so limits cannot be checked."""


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


def _owner_word(owner: str) -> str:
    return "API key" if owner == "key" else "consumer"


def _owner_value(owner: str, admission: Admission) -> str:
    return f"k{admission.key_id}" if owner == "key" else f"c{admission.consumer_id}"


def _budget_amount(metric: str, *, tokens: int, cost: int) -> int:
    if metric == "tokens":
        return tokens
    if metric == "requests":
        return 1
    return cost


def _check_request_rates(rules: list[RateRule], admission: Admission) -> None:
    """Count this request in each requests-per-window limit (django-ratelimit); sync."""
    from django_ratelimit.core import get_usage

    for rule in rules:
        value = _owner_value(rule.owner, admission)
        usage = get_usage(_RATELIMIT_REQUEST, group=_ratelimit_group(rule),
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
            raise _refuse_requests(rule, reset, admission)


def _refuse_requests(rule: RateRule, reset: int, admission: Admission) -> LimitExceeded:
    admission.refused = True
    message = rule.rejected_msg or (
        f"Rate limit exceeded: this {_owner_word(rule.owner)} may send {rule.requests} requests "
        f"per {rule.window_seconds} seconds. Retry in {max(1, reset)} seconds."
    )
    return LimitExceeded(message, code="rate_limit_exceeded", status=rule.rejected_code,
                         retry_after=max(1, reset), admission=admission)


def _refuse_budget(hold: Hold, total: int, admission: Admission) -> LimitExceeded:
    rule = hold.rule
    hold.total = total
    admission.refused = True
    now = admission.now or timezone.now()
    reset = hold.window.seconds_left(now)
    message = (
        f"Budget exceeded: this {_owner_word(rule.owner)}'s {rule.metric} budget of "
        f"{format_amount(rule.metric, rule.limit)} per {rule.period} ({rule.timezone}) has "
        f"{format_amount(rule.metric, max(0, rule.limit - total))} left, and this request may use up to "
        f"{format_amount(rule.metric, hold.amount)}. The budget resets at "
        f"{hold.window.ends_at.isoformat()}."
    )
    return LimitExceeded(message, code="budget_exceeded", status=429, retry_after=max(1, reset),
                         admission=admission)


def _refuse_tokens(token_hold: TokenHold, count: int, admission: Admission) -> LimitExceeded:
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


async def budget_reserve(
    *, key: KeyInfo, limits: Limits, request_id: str, tokens: int, cost: int, now: datetime | None = None,
) -> Admission:
    """Admit a request against its rate limits and budgets, holding its worst case.

    `tokens` is the request's worst case (prompt estimate + max tokens), `cost` the
    same in micro-dollars. Raises LimitExceeded (nothing stays held) or LimitsUnavailable.
    """
    now = now or timezone.now()
    admission = Admission(request_id=request_id, consumer_id=key.consumer_id, key_id=key.key_id, now=now)
    request_rules = [r for r in limits.rates if r.requests is not None]
    if request_rules and not counters.enabled():
        _check_request_rates(request_rules, admission)  # in-process cache: no I/O
    for rule in limits.budgets:
        window = window_at(rule.period, rule.timezone, now)
        amount = _budget_amount(rule.metric, tokens=tokens, cost=cost) if rule.hard else 0
        admission.holds.append(Hold(rule=rule, window=window, amount=amount))
    now_ts = now.timestamp()
    for rule in limits.rates:
        if rule.tokens is None:
            continue
        index = int(now_ts // rule.window_seconds)
        admission.token_holds.append(TokenHold(
            rule=rule,
            key=counters.token_window_key(rule.id, _owner_value(rule.owner, admission), index),
            amount=tokens,
            resets_in=int((index + 1) * rule.window_seconds - now_ts + 0.999),
        ))
    if counters.enabled():
        if admission.holds or admission.token_holds or request_rules:
            await _reserve_redis(admission, now, request_rules)
        return admission
    if admission.holds or admission.token_holds:
        _reserve_token_windows_in_cache(admission)
        try:
            await run_db(_reserve_db, admission, now)
        except LimitExceeded:
            _release_token_windows_in_cache(admission)
            raise
    return admission


def _request_window(rule: RateRule, admission: Admission) -> tuple[str, int]:
    """django-ratelimit's own cache key and window end for this rule and owner.

    On Redis the script increments these keys itself, in the same round trip as the
    budgets: calling django-ratelimit (sync, three round trips) from a thread cost
    2-6 ms per request here. The counters stay django-ratelimit's: `get_usage` reads them.
    """
    from django_ratelimit import ALL
    from django_ratelimit.core import _get_window, _make_cache_key

    value = _owner_value(rule.owner, admission)
    rate = (rule.requests, rule.window_seconds)
    window = _get_window(value, rule.window_seconds)
    return cache.make_key(_make_cache_key(_ratelimit_group(rule), window, rate, value, ALL)), window


def _ratelimit_group(rule: RateRule) -> str:
    return f"tollgate.ratelimit.{rule.id}"


async def _reserve_redis(admission: Admission, now: datetime, request_rules: list[RateRule]) -> None:
    from django_ratelimit.core import EXPIRATION_FUDGE

    keys: list[str] = []
    args: list = [f"{now.timestamp():.3f}", f"{now.timestamp() + settings.TOLLGATE_RESERVATION_TTL_SECONDS:.3f}",
                  admission.request_id, len(admission.holds), len(admission.token_holds), len(request_rules)]
    for hold in admission.holds:
        keys.extend(counters.budget_keys(hold.rule.id, hold.window.period_start))
        args += [hold.rule.limit if hold.rule.hard else -1, hold.amount, _budget_key_ttl(hold.window, now)]
    for token_hold in admission.token_holds:
        keys.append(token_hold.key)
        args += [token_hold.rule.tokens, token_hold.amount, token_hold.rule.window_seconds + 60]
    window_ends = []
    for rule in request_rules:
        key, window_end = _request_window(rule, admission)
        keys.append(key)
        window_ends.append(window_end)
        args += [rule.requests, rule.window_seconds + EXPIRATION_FUDGE]
    try:
        for _attempt in range(len(admission.holds) + 1):
            result = await counters.run(counters.RESERVE, keys, args)
            status, index = int(result[0]), int(result[1])
            if status == 3:
                await _seed(admission.holds[index - 1], now)
                continue
            break
        else:
            raise LimitsUnavailable("the budget counters could not be seeded")
    except counters.UNAVAILABLE_ERRORS as exc:
        raise LimitsUnavailable(str(exc)) from exc
    now_ts = int(now.timestamp())
    if status == 4:
        rule = request_rules[index - 1]
        count = int(result[2])
        admission.request_rates.append((rule.requests or 0, (rule.requests or 0) - count,
                                        max(0, window_ends[index - 1] - now_ts)))
        raise _refuse_requests(rule, max(0, window_ends[index - 1] - now_ts), admission)
    if status == 1:
        raise _refuse_budget(admission.holds[index - 1], int(result[2]), admission)
    if status == 2:
        raise _refuse_tokens(admission.token_holds[index - 1], int(result[2]), admission)
    values = [int(v) for v in result[2:]]
    for hold, total in zip(admission.holds, values, strict=False):
        hold.total = total
    rest = values[len(admission.holds):]
    for token_hold, count in zip(admission.token_holds, rest, strict=False):
        token_hold.count = count
    for rule, count, window_end in zip(request_rules, rest[len(admission.token_holds):], window_ends, strict=False):
        admission.request_rates.append((rule.requests or 0, (rule.requests or 0) - count,
                                        max(0, window_end - now_ts)))


def _budget_key_ttl(window: Window, now: datetime) -> int:
    # Kept a week past the window's end, for late settles and for the reset job.
    return max(60, int((window.ends_at - now).total_seconds()) + 7 * 86400)


async def _seed(hold: Hold, now: datetime) -> None:
    """Start a window's Redis counter from the database (new window, or Redis lost its data)."""
    used = await run_db(_window_rows(hold).values_list("used", flat=True).first)
    key, _ = counters.budget_keys(hold.rule.id, hold.window.period_start)
    await counters.run(counters.SEED, [key], [used or 0, _budget_key_ttl(hold.window, now)])


def _reserve_token_windows_in_cache(admission: Admission) -> None:
    """Tokens per window on the in-process cache (no Redis): increment, then undo if over."""
    for i, token_hold in enumerate(admission.token_holds):
        ttl = token_hold.rule.window_seconds + 60
        cache.add(token_hold.key, 0, ttl)
        count = cache.incr(token_hold.key, token_hold.amount)
        if count > (token_hold.rule.tokens or 0):
            cache.decr(token_hold.key, token_hold.amount)
            for earlier in admission.token_holds[:i]:
                cache.decr(earlier.key, earlier.amount)
            raise _refuse_tokens(token_hold, count - token_hold.amount, admission)
        token_hold.count = count


def _release_token_windows_in_cache(admission: Admission) -> None:
    for token_hold in admission.token_holds:
        try:
            cache.decr(token_hold.key, token_hold.amount)
        except ValueError:
            pass


def _ensure_usage_row(hold: Hold) -> None:
    BudgetUsage.objects.bulk_create(
        [BudgetUsage(budget_id=hold.rule.id, period_start=hold.window.period_start,
                     starts_at=hold.window.starts_at, ends_at=hold.window.ends_at)],
        ignore_conflicts=True,
    )


def _window_rows(hold: Hold):
    return BudgetUsage.objects.filter(budget_id=hold.rule.id, period_start=hold.window.period_start)


def _reserve_db(admission: Admission, now: datetime) -> None:
    """Hold budget with `UPDATE ... WHERE used + reserved + n <= limit`, all or none."""
    expires_at = now + timedelta(seconds=settings.TOLLGATE_RESERVATION_TTL_SECONDS)
    refusal: LimitExceeded | None = None
    with transaction.atomic():
        for hold in admission.holds:
            if not hold.held:
                continue
            room = hold.rule.limit - hold.amount

            def conditional_update(hold: Hold = hold, room: int = room) -> int:
                return _window_rows(hold).filter(used__lte=room - F("reserved")).update(
                    reserved=F("reserved") + hold.amount)

            updated = conditional_update()
            if not updated:
                _ensure_usage_row(hold)  # a new window has no row yet
                updated = conditional_update()
            if not updated and _expire_db_reservations(hold=hold, now=now):
                updated = conditional_update()  # holds of a killed worker were in the way
            if not updated:
                total = _window_rows(hold).annotate(total=F("used") + F("reserved")).values_list(
                    "total", flat=True).first()
                refusal = _refuse_budget(hold, total or 0, admission)
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
    _read_db_totals(admission)


def _read_db_totals(admission: Admission) -> None:
    if not admission.holds:
        return
    rows = BudgetUsage.objects.filter(
        budget_id__in=[h.rule.id for h in admission.holds],
        period_start__in={h.window.period_start for h in admission.holds},
    ).values_list("budget_id", "period_start", "used", "reserved")
    totals = {(b, p): u + r for b, p, u, r in rows}
    for hold in admission.holds:
        hold.total = totals.get((hold.rule.id, hold.window.period_start), 0)


def _expire_db_reservations(*, hold: Hold | None = None, now: datetime) -> int:
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
            await _settle_redis(admission, charges, tokens)
            if settings.TOLLGATE_BUDGET_MIRROR_SECONDS > 0:
                for hold, charge in zip(admission.holds, charges, strict=True):
                    if charge:
                        usage_mirror.add(hold, charge)
            else:
                await run_db(_mirror_db, admission, charges)
        else:
            for token_hold in admission.token_holds:
                try:
                    cache.incr(token_hold.key, tokens - token_hold.amount)
                except ValueError:
                    pass  # the window is over
                token_hold.count += tokens - token_hold.amount
            await run_db(_settle_db, admission, charges)
    except Exception:
        # The holds expire by themselves; the charge is lost only from the counters.
        logger.exception("request %s: settling budgets failed", admission.request_id)
        return
    await _alerts_due(admission)


async def _settle_redis(admission: Admission, charges: list[int], tokens: int) -> None:
    keys: list[str] = []
    args: list = [admission.request_id, len(admission.holds), len(admission.token_holds)]
    for hold, charge in zip(admission.holds, charges, strict=True):
        keys.extend(counters.budget_keys(hold.rule.id, hold.window.period_start))
        args += [charge, 1 if (hold.held and admission.metered) else 0]
    for token_hold in admission.token_holds:
        keys.append(token_hold.key)
        args.append(tokens - token_hold.amount if admission.metered else tokens)
    try:
        result = await counters.run(counters.SETTLE, keys, args)
    except counters.UNAVAILABLE_ERRORS:
        # Redis went away (before or after admitting): the database mirror below still gets the
        # charge, and a restarted Redis is seeded from it; a metered hold expires by itself.
        logger.warning("request %s: settling in Redis failed; charged to the database copy",
                       admission.request_id)
        return
    values = [int(v) for v in result]
    for hold, total in zip(admission.holds, values, strict=False):
        if total >= 0:
            hold.total = total
    for token_hold, count in zip(admission.token_holds, values[len(admission.holds):], strict=False):
        token_hold.count = count


class _UsageMirror:
    """Settled charges waiting for the database copy, written by one thread per process.

    With Redis the counters of record are there; the database copy (reports, history)
    is written every TOLLGATE_BUDGET_MIRROR_SECONDS in one transaction instead of a
    commit per request. A killed worker loses at most that much of the copy, never of
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
            for connection in connections.all(initialized_only=True):
                connection.close_if_unusable_or_obsolete()
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
    if not _window_rows(hold).update(used=F("used") + charge):
        _ensure_usage_row(hold)
        _window_rows(hold).update(used=F("used") + charge)


usage_mirror = _UsageMirror()
atexit.register(usage_mirror.flush)


def _mirror_db(admission: Admission, charges: list[int]) -> None:
    """The database copy of Redis' budget counters: settled usage, for reports and history."""
    if not any(charges):
        return
    with transaction.atomic():  # one commit for all the request's budgets
        for hold, charge in zip(admission.holds, charges, strict=True):
            if charge and not _window_rows(hold).update(used=F("used") + charge):
                _ensure_usage_row(hold)
                _window_rows(hold).update(used=F("used") + charge)


def _settle_db(admission: Admission, charges: list[int]) -> None:
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
            if not _window_rows(hold).update(**changes):
                _ensure_usage_row(hold)
                _window_rows(hold).update(**changes)
    _read_db_totals(admission)


_alerted: set[tuple[int, date]] = set()  # windows this process already queued an alert for


async def _alerts_due(admission: Admission) -> None:
    for hold in admission.holds:
        percent = hold.rule.alert_at_percent
        if percent is None or hold.total * 100 < hold.rule.limit * percent:
            continue
        window_id = (hold.rule.id, hold.window.period_start)
        if window_id in _alerted:
            continue
        _alerted.add(window_id)
        try:
            from budgets.tasks import budget_alert

            await asyncio.to_thread(budget_alert.delay, hold.rule.id, hold.window.period_start.isoformat())
        except Exception:
            _alerted.discard(window_id)  # the daily job sends it otherwise
            logger.exception("could not queue the alert for budget %s", hold.rule.id)


def budget_admit_unmetered(*, key: KeyInfo, limits: Limits, request_id: str,
                           now: datetime | None = None) -> Admission:
    """Fail open: an admission that holds nothing but still charges the request when it settles."""
    now = now or timezone.now()
    admission = Admission(request_id=request_id, consumer_id=key.consumer_id, key_id=key.key_id,
                          metered=False, now=now)
    for rule in limits.budgets:
        admission.holds.append(Hold(rule=rule, window=window_at(rule.period, rule.timezone, now), amount=0))
    return admission


# --- The budget reset job and alerts (Celery: budgets/tasks.py) --------------------------


@dataclass(frozen=True)
class ResetReport:
    closed: int
    alerts: int


def budget_periods_close(*, now: datetime | None = None) -> int:
    """Move every finished window's usage into BudgetHistory; idempotent, catches up any backlog.

    A window's row is deleted in the same transaction as its history is written, so
    running twice closes nothing twice; a late charge (a stream that outlived its
    window) recreates the row and is added to the history on the next run.
    """
    from django.db.models.functions import Greatest

    from budgets.models import Budget, BudgetHistory

    now = now or timezone.now()
    usage_mirror.flush()
    closed = 0
    live = _live_used_reader()
    for pk in BudgetUsage.objects.filter(ends_at__lte=now).values_list("pk", flat=True).order_by("ends_at"):
        with transaction.atomic():
            usage = BudgetUsage.objects.select_for_update().select_related("budget").filter(pk=pk).first()
            if usage is None:
                continue  # closed by a concurrent run
            budget: Budget = usage.budget
            # Redis is ahead of the database copy by the charges a killed worker never wrote.
            usage.used = max(usage.used, live(budget.pk, usage.period_start))
            history, created = BudgetHistory.objects.get_or_create(
                budget=budget, period_start=usage.period_start,
                defaults={"starts_at": usage.starts_at, "ends_at": usage.ends_at, "metric": budget.metric,
                          "limit": budget.limit, "used": usage.used, "closed_at": now},
            )
            if not created:
                BudgetHistory.objects.filter(pk=history.pk).update(
                    used=F("used") + Greatest(usage.used, 0), closed_at=now)
            BudgetReservation.objects.filter(budget=budget, period_start=usage.period_start).delete()
            usage.delete()
            closed += 1
    return closed


def _live_used_reader():
    """used(budget_id, period_start) from Redis (0 when absent or without Redis)."""
    if not counters.enabled():
        return lambda budget_id, period_start: 0
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)

    def used(budget_id: int, period_start: date) -> int:
        key, _ = counters.budget_keys(budget_id, period_start)
        value = client.hget(key, "used")
        return int(value) if value is not None else 0

    return used


def budget_alerts_due(*, now: datetime | None = None) -> list[tuple[int, date]]:
    """Current windows over their alert threshold that have not alerted yet."""
    now = now or timezone.now()
    due = []
    rows = BudgetUsage.objects.filter(
        ends_at__gt=now, alert_sent_at__isnull=True, budget__enabled=True, budget__alert_at_percent__isnull=False,
    ).values_list("budget_id", "period_start", "used", "budget__limit", "budget__alert_at_percent")
    for budget_id, period_start, used, limit, percent in rows:
        if used * 100 >= limit * percent:
            due.append((budget_id, period_start))
    return due


def budget_alert_send(*, budget_id: int, period_start: date, now: datetime | None = None) -> bool:
    """Send a window's alert (email and/or webhook) at most once; True when this call sent it."""
    from budgets.models import Budget

    now = now or timezone.now()
    budget = Budget.objects.select_related("consumer", "key__consumer").filter(pk=budget_id).first()
    if budget is None or budget.alert_at_percent is None:
        return False
    usage = BudgetUsage.objects.filter(budget=budget, period_start=period_start).first()
    if usage is None or usage.used * 100 < budget.limit * budget.alert_at_percent:
        return False
    # The conditional UPDATE is the "once": of any number of concurrent senders, one wins.
    if BudgetUsage.objects.filter(pk=usage.pk, alert_sent_at__isnull=True).update(alert_sent_at=now) != 1:
        return False
    owner = budget.consumer.name if budget.consumer_id else f"key {budget.key.prefix} of {budget.key.consumer.name}"
    percent_used = usage.used * 100 // max(1, budget.limit)
    subject = f"Tollgate budget alert: {owner} used {percent_used}% of its {budget.metric} budget"
    text = (
        f"{owner} has used {format_amount(budget.metric, usage.used)} of its {budget.mode} {budget.metric} "
        f"budget of {budget.limit_display} per {budget.period} ({budget.timezone}), period starting "
        f"{period_start.isoformat()} ({percent_used}%, alert threshold {budget.alert_at_percent}%)."
    )
    payload = {
        "event": "budget.alert", "budget_id": budget.pk, "owner": owner, "metric": budget.metric,
        "mode": budget.mode, "limit": budget.limit, "used": usage.used, "percent_used": percent_used,
        "alert_at_percent": budget.alert_at_percent, "period": budget.period,
        "period_start": period_start.isoformat(), "timezone": budget.timezone, "message": text,
    }
    if budget.alert_email:
        try:
            from django.core.mail import send_mail

            send_mail(subject, text, settings.TOLLGATE_ALERT_FROM_EMAIL, [budget.alert_email])
        except Exception:
            logger.exception("budget %s: alert email failed", budget.pk)
    if budget.alert_webhook:
        try:
            import httpx

            httpx.post(budget.alert_webhook, json=payload, timeout=10).raise_for_status()
        except Exception:
            logger.exception("budget %s: alert webhook failed", budget.pk)
    logger.warning("budget alert: %s", text)
    return True


def budget_reset(*, now: datetime | None = None) -> ResetReport:
    """The daily job: close finished windows into history, send alerts that are due."""
    now = now or timezone.now()
    closed = budget_periods_close(now=now)
    sent = sum(budget_alert_send(budget_id=b, period_start=p, now=now) for b, p in budget_alerts_due(now=now))
    return ResetReport(closed=closed, alerts=sent)


def budget_reservations_expire(*, now: datetime | None = None) -> int:
    """Release database holds whose worker died (Redis holds expire inside the reserve script)."""
    return _expire_db_reservations(now=now or timezone.now())
