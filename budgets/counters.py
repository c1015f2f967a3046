"""Shared counters for budgets and token rate limits in Redis, changed only by Lua scripts.

Each script runs atomically in Redis: the check `used + reserved + n <= limit` and the
increment happen as one step, for every budget of the request at once, so concurrent
requests on any number of workers cannot overspend. A budget window is one hash
(`used`, `reserved`, and `r:<request id>` for each hold) plus a sorted set of the
holds by expiry time, so a hold whose worker died is released by the next reservation.
"""
from __future__ import annotations

import asyncio
import weakref
from datetime import date

import redis.asyncio as aioredis
from django.conf import settings

# Per budget i (KEYS 2i-1 = hash, 2i = holds), then per token window j (KEYS 2n+j), then
# per request-rate window k (KEYS 2n+m+k: django-ratelimit's own counter keys).
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

# The Redis errors that mean "the shared counters cannot be reached".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (aioredis.ConnectionError, aioredis.TimeoutError, OSError)

_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis] = weakref.WeakKeyDictionary()


def enabled() -> bool:
    return bool(settings.REDIS_URL)


def client() -> aioredis.Redis:
    """This worker's Redis client, bound to the running event loop (one per worker in production)."""
    loop = asyncio.get_running_loop()
    redis_client = _clients.get(loop)
    if redis_client is None:
        options = settings.CACHES["default"].get("OPTIONS", {})
        # A bounded pool: a burst of concurrent requests waits briefly for one of a
        # few dozen connections instead of opening hundreds (each a Redis client,
        # and each a chance to time out while the machine is saturated).
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.TOLLGATE_REDIS_MAX_CONNECTIONS,
            timeout=5,
            socket_timeout=options.get("socket_timeout", 2),
            socket_connect_timeout=options.get("socket_connect_timeout", 2),
        )
        redis_client = aioredis.Redis(connection_pool=pool)
        _clients[loop] = redis_client
    return redis_client


def _prefix() -> str:
    return settings.CACHES["default"].get("KEY_PREFIX") or "tg"


def budget_keys(budget_id: int, period_start: date) -> tuple[str, str]:
    base = f"{_prefix()}:budget:{budget_id}:{period_start.isoformat()}"
    return base, base + ":holds"


def token_window_key(rate_id: int, owner: str, window_index: int) -> str:
    return f"{_prefix()}:tokens:{rate_id}:{owner}:{window_index}"


_scripts: weakref.WeakKeyDictionary[aioredis.Redis, dict[str, object]] = weakref.WeakKeyDictionary()


async def run(script: str, keys: list[str], args: list) -> list:
    """Run a script: EVALSHA first, EVAL when Redis does not know it yet (after a restart)."""
    redis_client = client()
    registered = _scripts.setdefault(redis_client, {})
    runner = registered.get(script)
    if runner is None:
        runner = registered[script] = redis_client.register_script(script)
    return await runner(keys=keys, args=args)  # type: ignore[operator]
