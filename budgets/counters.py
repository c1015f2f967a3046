"""Shared counters for budgets and token rate limits in Redis, changed only by Lua scripts.

Each script runs atomically in Redis: the check `used + reserved + n <= limit` and the
increment happen as one step, for every budget of the request at once, so concurrent
requests on any number of workers cannot overspend. A budget window is one hash
(`used`, `reserved`, and `r:<request id>` for each hold) plus a sorted set of the
holds by expiry time, so a hold whose worker died is released by the next reservation.

Below the scripts, the Redis side of admission: `reserve` and `settle` build a request's
keys and arguments from its Admission and read the script's answer back into it
(budgets.admission decides when to call them).

Every key one script touches carries the admission's hash tag (`{c<consumer>}`, or
`{t<team>}` for a consumer in a team: Admission.slot), so on a Redis Cluster the script
runs on one node, atomically, as on a single server. A budget's counters are always
reached with the same tag (budget_slot); moving a consumer to another team moves its
counters to new keys, which are seeded again from the database (docs/deployment.md).
"""
from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django_ratelimit.core import EXPIRATION_FUDGE, _get_window

from budgets.holds import (
    Admission,
    Hold,
    LimitsUnavailable,
    RateRule,
    redis_slot,
    refuse_budget,
    refuse_requests,
    refuse_tokens,
)
from budgets.periods import Window
from budgets.usage import window_rows
from gateway_site.lib import redisclient
from gateway_site.lib.db import run_db

if TYPE_CHECKING:
    from budgets.models import Budget

logger = logging.getLogger("tollgate.budgets")

# Per budget i (KEYS 2i-1 = hash, 2i = holds), then per token window j (KEYS 2n+j), then
# per request-rate window k (KEYS 2n+m+k).
# ARGV: now, hold expiry, request id, n budgets, m token windows, p request windows, then
# per budget (limit or -1 for soft, amount, key ttl), per token window (limit, amount,
# ttl), per request window (limit, ttl).
# Returns {status, index, values...}: status 0 admitted (values: per budget used+reserved,
# per token window and per request window the count, after this request), 1 refused by
# budget `index`, 2 by token window `index`, 4 by request window `index` (values: the
# current amount), 3 budget `index` needs seeding. A request window counts every
# attempt, refused or not, as django-ratelimit does.
RESERVE = """
local now = tonumber(ARGV[1])
local expiry = ARGV[2]
local member = ARGV[3]
local n = tonumber(ARGV[4])
local m = tonumber(ARGV[5])
local p = tonumber(ARGV[6])
local rbase = 7 + 3 * n + 3 * m
for i = 1, n do
  if redis.call('HEXISTS', KEYS[2 * i - 1], 'used') == 0 then
    return {3, i}
  end
end
local requests = {}
for k = 1, p do
  local key = KEYS[2 * n + m + k]
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('EXPIRE', key, ARGV[rbase + 1 + 2 * (k - 1)]) end
  requests[k] = count
  if count > tonumber(ARGV[rbase + 2 * (k - 1)]) then
    return {4, k, count}
  end
end
local current = {}
for i = 1, n do
  local h = KEYS[2 * i - 1]
  local z = KEYS[2 * i]
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  if #expired > 0 then
    for _, e in ipairs(expired) do
      local held = tonumber(redis.call('HGET', h, 'r:' .. e) or '0')
      redis.call('HINCRBY', h, 'reserved', -held)
      redis.call('HDEL', h, 'r:' .. e)
    end
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
  end
  local total = tonumber(redis.call('HGET', h, 'used') or '0') + tonumber(redis.call('HGET', h, 'reserved') or '0')
  local limit = tonumber(ARGV[7 + 3 * (i - 1)])
  local amount = tonumber(ARGV[8 + 3 * (i - 1)])
  if limit >= 0 and total + amount > limit then
    return {1, i, total}
  end
  current[i] = total
end
local base = 7 + 3 * n
local windows = {}
for j = 1, m do
  local count = tonumber(redis.call('GET', KEYS[2 * n + j]) or '0')
  local limit = tonumber(ARGV[base + 3 * (j - 1)])
  local amount = tonumber(ARGV[base + 1 + 3 * (j - 1)])
  if count + amount > limit then
    return {2, j, count}
  end
  windows[j] = count
end
local out = {0, 0}
for i = 1, n do
  local h = KEYS[2 * i - 1]
  local z = KEYS[2 * i]
  local limit = tonumber(ARGV[7 + 3 * (i - 1)])
  local amount = tonumber(ARGV[8 + 3 * (i - 1)])
  local ttl = tonumber(ARGV[9 + 3 * (i - 1)])
  if limit >= 0 and amount > 0 then
    redis.call('HINCRBY', h, 'reserved', amount)
    redis.call('HSET', h, 'r:' .. member, amount)
    redis.call('ZADD', z, expiry, member)
    redis.call('EXPIRE', z, ttl)
    current[i] = current[i] + amount
  end
  redis.call('EXPIRE', h, ttl)
  out[#out + 1] = current[i]
end
for j = 1, m do
  local amount = tonumber(ARGV[base + 1 + 3 * (j - 1)])
  local ttl = tonumber(ARGV[base + 2 + 3 * (j - 1)])
  local count = redis.call('INCRBY', KEYS[2 * n + j], amount)
  redis.call('EXPIRE', KEYS[2 * n + j], ttl)
  out[#out + 1] = count
end
for k = 1, p do
  out[#out + 1] = requests[k]
end
return out
"""

# KEYS as for RESERVE. ARGV: request id, n, m, then per budget (charge, held 0/1),
# then per window (adjustment). Releases the request's holds (unless they already
# expired), adds the real usage, and returns used+reserved per budget and the count
# per window. A budget hash that vanished (Redis restarted) is not recreated here:
# the next reservation seeds it from the database, which holds every settled charge.
SETTLE = """
local member = ARGV[1]
local n = tonumber(ARGV[2])
local m = tonumber(ARGV[3])
local out = {}
for i = 1, n do
  local h = KEYS[2 * i - 1]
  local z = KEYS[2 * i]
  local charge = tonumber(ARGV[4 + 2 * (i - 1)])
  if tonumber(ARGV[5 + 2 * (i - 1)]) == 1 and redis.call('ZREM', z, member) == 1 then
    local held = tonumber(redis.call('HGET', h, 'r:' .. member) or '0')
    redis.call('HINCRBY', h, 'reserved', -held)
    redis.call('HDEL', h, 'r:' .. member)
  end
  if redis.call('HEXISTS', h, 'used') == 1 then
    if charge ~= 0 then redis.call('HINCRBY', h, 'used', charge) end
    out[#out + 1] = tonumber(redis.call('HGET', h, 'used')) + tonumber(redis.call('HGET', h, 'reserved') or '0')
  else
    out[#out + 1] = -1
  end
end
local base = 4 + 2 * n
for j = 1, m do
  local key = KEYS[2 * n + j]
  local adjust = tonumber(ARGV[base + j - 1])
  if redis.call('EXISTS', key) == 1 then
    if adjust ~= 0 then redis.call('INCRBY', key, adjust) end
    out[#out + 1] = tonumber(redis.call('GET', key))
  else
    out[#out + 1] = 0
  end
end
return out
"""

# KEYS[1] = budget hash; ARGV: used from the database, ttl. Sets `used` only if missing;
# otherwise raises it to the database's figure (the database can only be ahead after
# requests were served unmetered while Redis was unreachable).
SEED = """
if redis.call('HSETNX', KEYS[1], 'used', ARGV[1]) == 0 then
  local used = tonumber(redis.call('HGET', KEYS[1], 'used'))
  if used < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'used', ARGV[1]) end
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HGET', KEYS[1], 'used')
"""

# The Redis errors that mean "the shared counters cannot be reached" (any topology).
UNAVAILABLE_ERRORS = redisclient.UNAVAILABLE_ERRORS


def enabled() -> bool:
    return redisclient.configured()


def client() -> Any:
    """This worker's Redis client, bound to the running event loop (one per worker in production)."""
    return redisclient.async_client()


def _prefix() -> str:
    return settings.CACHES["default"].get("KEY_PREFIX") or "tg"


def budget_keys(slot: str, budget_id: int, period_start: date) -> tuple[str, str]:
    """A budget window's hash and its holds, under the hash tag of the admissions that reach it."""
    base = f"{_prefix()}:budget:{{{slot}}}:{budget_id}:{period_start.isoformat()}"
    return base, base + ":holds"


def budget_slot(budget: Budget) -> str:
    """The hash tag of a budget's counters outside a request (reports, the reset job): the slot
    every admission that reaches the budget uses (budgets.holds.redis_slot). With teams, a budget
    of a consumer in a team, of its keys, or of the team itself takes the team's tag, as
    Admission.slot does: derive it here, from the same fields."""
    if budget.team_id is not None:
        return redis_slot(consumer_id=0, team_id=budget.team_id)
    consumer = budget.consumer if budget.consumer_id is not None else budget.key.consumer  # type: ignore[union-attr]
    assert consumer is not None  # a budget has exactly one owner: a team, a consumer or a key
    return redis_slot(consumer_id=consumer.pk, team_id=consumer.team_id)


def token_window_key(slot: str, rate_id: int, owner: str, window_index: int) -> str:
    return f"{_prefix()}:tokens:{{{slot}}}:{rate_id}:{owner}:{window_index}"


_scripts: weakref.WeakKeyDictionary[Any, dict[str, object]] = weakref.WeakKeyDictionary()


async def run(script: str, keys: list[str], args: list) -> list:
    """Run a script: EVALSHA first, EVAL when Redis does not know it yet (after a restart)."""
    redis_client = client()
    registered = _scripts.setdefault(redis_client, {})
    runner = registered.get(script)
    if runner is None:
        runner = registered[script] = redis_client.register_script(script)
    limit = redisclient.concurrency_limit()
    if limit is None:
        return await runner(keys=keys, args=args)  # type: ignore[operator]
    async with limit, redisclient.guarded(redis_client):
        return await runner(keys=keys, args=args)  # type: ignore[operator]


class _Outage:
    """This process's view of the counters' availability, for the failover rules.

    On a Cluster or Sentinel, an outage shorter than TOLLGATE_REDIS_FAILOVER_SECONDS is taken
    for a failover and refused even when failing open. A failover may lose writes the old
    master had acknowledged (replication is asynchronous): afterwards each budget this process
    reaches is seeded again from the database once (SEED only ever raises `used`), so a
    charge lost with the old master is restored from the database copy.
    """

    def __init__(self) -> None:
        self.since: float | None = None
        self.reseed = False
        self.verified: set[str] = set()

    def failed(self, exc: BaseException) -> LimitsUnavailable:
        now = time.monotonic()
        replicated = redisclient.replicated()
        if self.since is None:
            self.since = now
            if replicated:
                self.reseed, self.verified = True, set()
        failover = replicated and now - self.since < settings.TOLLGATE_REDIS_FAILOVER_SECONDS
        return LimitsUnavailable(f"{exc.__class__.__name__}: {exc}", failover=failover)

    def answered(self) -> None:
        self.since = None


outage = _Outage()


# --- The Redis side of admission ------------------------------------------------------------


def request_window(rule: RateRule, admission: Admission) -> tuple[str, int]:
    """The counter key and window end of this rule and owner, for requests per window.

    On Redis the script increments these keys itself, in the same round trip as the
    budgets: calling django-ratelimit (sync, three round trips) from a thread cost
    2-6 ms per request here. The windows are django-ratelimit's (the same staggered ends as
    without Redis, where budgets.fallback calls it); the key is ours, with the admission's
    hash tag, and only the script reads it (the counts reach the x-ratelimit-* headers).
    """
    value = admission.owner_value(rule.owner)
    window = _get_window(value, rule.window_seconds)
    return f"{_prefix()}:requests:{{{admission.slot}}}:{rule.id}:{value}:{window}", window


async def reserve(admission: Admission, now: datetime, request_rules: list[RateRule]) -> None:
    """Hold the request's budgets and token windows and count its request windows, in one script.

    Raises LimitExceeded (nothing stays held) or LimitsUnavailable (Redis cannot be reached).
    """
    keys: list[str] = []
    args: list = [f"{now.timestamp():.3f}", f"{now.timestamp() + settings.TOLLGATE_RESERVATION_TTL_SECONDS:.3f}",
                  admission.request_id, len(admission.holds), len(admission.token_holds), len(request_rules)]
    slot = admission.slot
    for hold in admission.holds:
        keys.extend(budget_keys(slot, hold.rule.id, hold.window.period_start))
        args += [hold.rule.limit if hold.rule.hard else -1, hold.amount, _budget_key_ttl(hold.window, now)]
    for token_hold in admission.token_holds:
        keys.append(token_hold.key)
        args += [token_hold.rule.tokens, token_hold.amount, token_hold.rule.window_seconds + 60]
    window_ends = []
    for rule in request_rules:
        key, window_end = request_window(rule, admission)
        keys.append(key)
        window_ends.append(window_end)
        args += [rule.requests, rule.window_seconds + EXPIRATION_FUDGE]
    try:
        if outage.reseed:
            for i, hold in enumerate(admission.holds):
                if keys[2 * i] not in outage.verified:
                    await _seed(hold, slot, now)
                    outage.verified.add(keys[2 * i])
        for _attempt in range(len(admission.holds) + 1):
            result = await run(RESERVE, keys, args)
            status, index = int(result[0]), int(result[1])
            if status == 3:
                await _seed(admission.holds[index - 1], slot, now)
                continue
            break
        else:
            raise LimitsUnavailable("the budget counters could not be seeded")
    except UNAVAILABLE_ERRORS as exc:
        raise outage.failed(exc) from exc
    outage.answered()
    now_ts = int(now.timestamp())
    if status == 4:
        rule = request_rules[index - 1]
        count = int(result[2])
        admission.request_rates.append((rule.requests or 0, (rule.requests or 0) - count,
                                        max(0, window_ends[index - 1] - now_ts)))
        raise refuse_requests(rule, max(0, window_ends[index - 1] - now_ts), admission)
    if status == 1:
        raise refuse_budget(admission.holds[index - 1], int(result[2]), admission)
    if status == 2:
        raise refuse_tokens(admission.token_holds[index - 1], int(result[2]), admission)
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


async def _seed(hold: Hold, slot: str, now: datetime) -> None:
    """Start a window's Redis counter from the database (new window, or Redis lost its data),
    or raise it to the database's figure (after a failover lost charges)."""
    used = await run_db(window_rows(hold).values_list("used", flat=True).first)
    key, _ = budget_keys(slot, hold.rule.id, hold.window.period_start)
    await run(SEED, [key], [used or 0, _budget_key_ttl(hold.window, now)])


async def settle(admission: Admission, charges: list[int], tokens: int) -> None:
    """Release the request's holds and add its real usage; logs (never raises) when Redis is gone."""
    keys: list[str] = []
    args: list = [admission.request_id, len(admission.holds), len(admission.token_holds)]
    for hold, charge in zip(admission.holds, charges, strict=True):
        keys.extend(budget_keys(admission.slot, hold.rule.id, hold.window.period_start))
        args += [charge, 1 if (hold.held and admission.metered) else 0]
    for token_hold in admission.token_holds:
        keys.append(token_hold.key)
        args.append(tokens - token_hold.amount if admission.metered else tokens)
    try:
        result = await run(SETTLE, keys, args)
    except UNAVAILABLE_ERRORS as exc:
        outage.failed(exc)  # a failover seen at settle also re-seeds the budgets afterwards
        # Redis went away (before or after admitting): the database mirror still gets the
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


def live_used_reader() -> Callable[[Budget, date], int]:
    """used(budget, period_start) from Redis (0 when absent or without Redis); sync, for the reset job."""
    if not enabled():
        return lambda budget, period_start: 0
    sync_client = redisclient.sync_client()

    def used(budget: Budget, period_start: date) -> int:
        key, _ = budget_keys(budget_slot(budget), budget.pk, period_start)
        value = sync_client.hget(key, "used")
        return int(value) if value is not None else 0

    return used
