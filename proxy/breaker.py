"""A circuit breaker per deployment, its state in the shared cache so every worker and node sees it.

- *closed*: no key. Failures are counted in a fixed window
  (TOLLGATE_BREAKER_WINDOW_SECONDS); TOLLGATE_BREAKER_FAILURES of them open it.
- *open*: `open_until` lies in the future; the deployment is skipped. A provider's
  `Retry-After` opens it for that long (capped), whatever the count.
- *half-open*: `open_until` has passed. One request at a time (a token taken with
  an atomic `add`) may try it: success closes the breaker, failure opens it again.

When every deployment of a route is open, the one that went out first is tried at once, one
request at a time (`first_out`), instead of refusing the route for a whole cooldown: the first
request after a blip is served. A breaker opened by the provider's own Retry-After is held until
then (no early trial), and a failed early trial holds the token for a second, so a provider that
is really down sees at most one request a second from the whole gateway. A request whose client
left gives its trial token back (`release_trial`): a client leaving proves nothing either way.

The hot path reads the `open_until` values through a per-process snapshot that is
refreshed from the shared cache at most every TOLLGATE_BREAKER_RECHECK_SECONDS,
so a request usually costs no cache round trip; failures are rare and write through.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Literal

from django.conf import settings
from django.utils import timezone

from gateway_site.lib.sharedcache import cache

logger = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open"]
# The key outlives open_until so that the breaker is seen half-open, not closed, afterwards.
_HALF_OPEN_MEMORY = 3600.0


def _open_key(deployment_id: int) -> str:
    return f"breaker:{deployment_id}:open_until"


def _fails_key(deployment_id: int) -> str:
    return f"breaker:{deployment_id}:fails"


def _trial_key(deployment_id: int) -> str:
    return f"breaker:{deployment_id}:trial"


def _error_key(deployment_id: int) -> str:
    return f"breaker:{deployment_id}:last_error"


def _persist_key(deployment_id: int) -> str:
    return f"breaker:{deployment_id}:persisted"


def _held_key(deployment_id: int) -> str:
    # Present while a breaker opened by the provider's Retry-After must stay open (no early trial).
    return f"breaker:{deployment_id}:held"


# Seconds a failed early trial keeps the trial token: at most one early trial a second.
EARLY_TRIAL_SPACING_SECONDS = 1


def state_at(open_until: float | None, now: float) -> State:
    if open_until is None:
        return "closed"
    return "open" if now < open_until else "half_open"


class _Snapshot:
    """This process's copy of the open_until values, per set of deployments."""

    def __init__(self) -> None:
        self._values: dict[int, float | None] = {}
        self._checked: dict[frozenset[int], float] = {}

    def clear(self) -> None:
        self._values.clear()
        self._checked.clear()

    async def open_until(self, ids: frozenset[int]) -> dict[int, float | None]:
        now = time.monotonic()
        checked = self._checked.get(ids)
        if checked is None or now - checked >= settings.TOLLGATE_BREAKER_RECHECK_SECONDS:
            try:
                found = await cache.aget_many([_open_key(i) for i in ids])
            except Exception:
                # The shared cache is down: route as if every breaker were closed.
                logger.warning("breaker state unavailable", exc_info=True)
                found = {}
            for i in ids:
                self._values[i] = found.get(_open_key(i))
            self._checked[ids] = now
        return {i: self._values.get(i) for i in ids}

    def note(self, deployment_id: int, open_until: float | None) -> None:
        self._values[deployment_id] = open_until


snapshot = _Snapshot()


async def states(ids: Iterable[int]) -> dict[int, State]:
    now = time.time()
    return {i: state_at(v, now) for i, v in (await snapshot.open_until(frozenset(ids))).items()}


async def open_until_many(ids: Iterable[int]) -> dict[int, float | None]:
    return await snapshot.open_until(frozenset(ids))


async def acquire_trial(deployment_id: int) -> bool:
    """Take the one trial request of a half-open deployment; False if another worker has it."""
    timeout = max(1, int(settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS))
    try:
        return bool(await cache.aadd(_trial_key(deployment_id), 1, timeout=timeout))
    except Exception:
        return True


async def release_trial(deployment_id: int) -> None:
    """Give the trial token back unused (the request's client left before the trial proved anything)."""
    try:
        await cache.adelete(_trial_key(deployment_id))
    except Exception:
        logger.warning("could not release the trial of deployment %s", deployment_id, exc_info=True)


async def first_out(open_until: dict[int, float | None]) -> tuple[int | None, dict[int, float | None]]:
    """When all of `open_until` are open: the deployment to try now, the one that went out first
    (the earliest open_until) of those neither held by a Retry-After nor with a trial under way,
    or None; and when each may next be tried (for the 503's retry-after)."""
    ids = [i for i, until in open_until.items() if until is not None]
    try:
        found = await cache.aget_many([key for i in ids for key in (_held_key(i), _trial_key(i))])
    except Exception:
        logger.warning("breaker state unavailable", exc_info=True)
        return None, open_until
    free = [i for i in ids if _held_key(i) not in found]
    untried = [i for i in free if _trial_key(i) not in found]
    soon = time.time() + EARLY_TRIAL_SPACING_SECONDS
    next_try = {i: min(until, soon) if i in free and until is not None else until for i, until in open_until.items()}
    return min(untried, key=lambda i: open_until[i] or 0.0, default=None), next_try


async def _open(deployment_id: int, seconds: float, *, held: bool = False, trial: bool = False) -> None:
    until = time.time() + seconds
    await cache.aset(_open_key(deployment_id), until, timeout=seconds + _HALF_OPEN_MEMORY)
    await cache.adelete_many([_fails_key(deployment_id), _trial_key(deployment_id), _held_key(deployment_id)])
    if held:
        await cache.aset(_held_key(deployment_id), 1, timeout=max(1, math.ceil(seconds)))
    if trial:
        await cache.aset(_trial_key(deployment_id), 1, timeout=EARLY_TRIAL_SPACING_SECONDS)
    snapshot.note(deployment_id, until)


async def record_failure(deployment_id: int, message: str, *, retry_after: float | None = None,
                         trial: bool = False) -> None:
    """Count a failure that made the proxy fail over; it may open the breaker."""
    try:
        await cache.aset(_error_key(deployment_id), (message[:500], time.time()), timeout=7 * 86400)
        if retry_after is not None and retry_after > 0:
            await _open(deployment_id, min(retry_after, settings.TOLLGATE_BREAKER_MAX_COOLDOWN_SECONDS), held=True)
        elif trial:
            await _open(deployment_id, settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS, trial=True)
        else:
            key = _fails_key(deployment_id)
            await cache.aadd(key, 0, timeout=settings.TOLLGATE_BREAKER_WINDOW_SECONDS)
            try:
                failures = await cache.aincr(key)
            except ValueError:  # expired between add and incr
                failures = 1
                await cache.aset(key, 1, timeout=settings.TOLLGATE_BREAKER_WINDOW_SECONDS)
            if failures >= settings.TOLLGATE_BREAKER_FAILURES:
                await _open(deployment_id, settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS)
        await _persist_error(deployment_id, message)
    except Exception:
        logger.warning("could not record a failure of deployment %s", deployment_id, exc_info=True)


async def _persist_error(deployment_id: int, message: str) -> None:
    # At most one database write per deployment every 10 s, even in an error storm.
    if not await cache.aadd(_persist_key(deployment_id), 1, timeout=10):
        return
    from gateway_site.lib.db import run_db
    from proxy.models import Deployment

    await run_db(lambda: Deployment.objects.filter(pk=deployment_id).update(
        last_error=message[:2000], last_error_at=timezone.now()))


async def record_success(deployment_id: int) -> None:
    """A half-open deployment's trial succeeded: close its breaker."""
    try:
        await cache.adelete_many([_open_key(deployment_id), _fails_key(deployment_id), _trial_key(deployment_id),
                                  _held_key(deployment_id)])
    except Exception:
        logger.warning("could not close the breaker of deployment %s", deployment_id, exc_info=True)
    snapshot.note(deployment_id, None)


# --- Sync side: the health check task and the admin ---------------------------------------


def state_now(deployment_id: int) -> State:
    return state_at(cache.get(_open_key(deployment_id)), time.time())


def open_remaining(deployment_id: int) -> float:
    until = cache.get(_open_key(deployment_id))
    return max(0.0, until - time.time()) if until else 0.0


def last_error(deployment_id: int) -> tuple[str, float] | None:
    return cache.get(_error_key(deployment_id))


def trip(deployment_id: int, message: str) -> None:
    """Open the breaker now (a failed health check)."""
    seconds = settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS
    cache.set(_open_key(deployment_id), time.time() + seconds, timeout=seconds + _HALF_OPEN_MEMORY)
    cache.delete_many([_fails_key(deployment_id), _trial_key(deployment_id)])
    cache.set(_error_key(deployment_id), (message[:500], time.time()), timeout=7 * 86400)


def allow_trial(deployment_id: int) -> None:
    """A passing health check: an open breaker goes half-open at once, so one request can prove it."""
    if cache.get(_open_key(deployment_id)) is not None:
        cache.set(_open_key(deployment_id), time.time(), timeout=_HALF_OPEN_MEMORY)


def reset(deployment_id: int) -> None:
    cache.delete_many([_open_key(deployment_id), _fails_key(deployment_id), _trial_key(deployment_id),
                       _held_key(deployment_id)])
