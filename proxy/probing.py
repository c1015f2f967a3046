"""Defence against key and model probing (issue 8; docs/reliability.md).

Scanners send a harmless prompt with made-up keys, or to dozens of model names, to find a
proxy that answers. Per client address, in the shared cache (so every worker sees it):

- failed authentications are counted in a window, on every proxy path (each view calls
  authenticate_watched before anything else, the method check included); past
  TOLLGATE_PROBE_SLOW_AFTER each further refusal is delayed, past TOLLGATE_PROBE_BLOCK_AFTER
  its bad keys get 429s for TOLLGATE_PROBE_BLOCK_SECONDS (a valid key is still served: the check runs only on failure,
  so an authenticated request never waits for the shared cache);
- distinct model names an address or a key was refused are counted; at
  TOLLGATE_PROBE_MODEL_ALERT_AFTER a security alert is logged and POSTed to
  TOLLGATE_SECURITY_ALERT_WEBHOOK (once per window).

An address is counted per IPv4 address or per IPv6 /64 (gateway_site.lib.clientaddr.address_block).
Only failures reach the shared cache: an authenticated request costs nothing here.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest

from budgets.selectors import KeyInfo
from gateway_site.lib.clientaddr import address_block
from gateway_site.lib.sharedcache import cache
from proxy.alerts import security_alert
from proxy.auth import authenticate
from proxy.errors import GatewayError
from proxy.routing import RouteInfo, resolve_route

logger = logging.getLogger("tollgate.security")

BLOCKED_MESSAGE = "Too many failed authentication attempts from this address. Retry later."


def _id(value: str) -> str:
    # Cache keys of bounded size, whatever a client sends.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _count(name: str, timeout: float) -> int:
    """Increment a shared counter that expires `timeout` seconds after it was created."""
    if cache.add(name, 1, timeout=timeout):
        return 1
    try:
        return cache.incr(name)
    except ValueError:  # expired between add and incr
        cache.add(name, 1, timeout=timeout)
        return 1


def _blocked() -> GatewayError:
    seconds = int(settings.TOLLGATE_PROBE_BLOCK_SECONDS)
    return GatewayError("rate_limit", BLOCKED_MESSAGE, code="too_many_failed_attempts",
                        headers={"retry-after": str(seconds)})


def _failed_auth(address: str) -> tuple[bool, int]:
    """(blocked, failures in the window) after counting this failure."""
    address = address_block(address)
    block_key = f"probe:block:{_id(address)}"
    if cache.get(block_key):
        return True, 0
    failures = _count(f"probe:fail:{_id(address)}", settings.TOLLGATE_PROBE_WINDOW_SECONDS)
    if failures >= settings.TOLLGATE_PROBE_BLOCK_AFTER:
        cache.set(block_key, 1, timeout=settings.TOLLGATE_PROBE_BLOCK_SECONDS)
        logger.warning("address blocked after %d failed authentications", failures,
                       extra={"client_ip": address, "failures": failures})
        return True, failures
    return False, failures


def _requested_model(request: HttpRequest) -> str | None:
    """The model the request names: in its URL (/v1/models/{model}), else in a body already read.

    The real server never reads the body of a request without a valid key (gateway_site/asgi.py),
    so there only a model in the URL is seen."""
    match = getattr(request, "resolver_match", None)
    named = match.kwargs.get("model") if match is not None else None
    if isinstance(named, str):
        return named[:200]
    try:
        raw = request.body
        if len(raw) > settings.TOLLGATE_MAX_BODY_BYTES:
            return None
        model = orjson.loads(raw).get("model")
    except Exception:
        return None
    return model[:200] if isinstance(model, str) else None


async def authenticate_watched(request: HttpRequest, address: str | None) -> KeyInfo:
    """authenticate(), counting failures per address: slowed, then a 429 while blocked."""
    try:
        return await authenticate(request, address)
    except GatewayError as error:
        if error.kind != "authentication" or not address:
            raise
        try:
            blocked, failures = await asyncio.to_thread(_failed_auth, address)
        except Exception:
            logger.warning("probe counters unavailable", exc_info=True)
            raise error from None
        if blocked:
            # Refused whatever it asks for, so its model names are no longer counted: a blocked
            # address's flood costs one shared-cache read a request (tests/benchmarks/bench_hostile.py).
            raise _blocked() from None
        model = _requested_model(request)
        if model is not None:
            await model_refused(address=address, key_prefix=None, model=model)
        if failures > settings.TOLLGATE_PROBE_SLOW_AFTER:
            # Each further failure costs the prober more time (capped).
            extra = failures - settings.TOLLGATE_PROBE_SLOW_AFTER
            await asyncio.sleep(min(settings.TOLLGATE_PROBE_SLOW_SECONDS * extra, 5.0))
        raise


async def resolve_route_watched(key: KeyInfo, model: Any, address: str | None) -> RouteInfo:
    """resolve_route(), counting the distinct model names a key or address is refused."""
    try:
        return await resolve_route(key, model)
    except GatewayError as error:
        if error.kind == "not_found" and isinstance(model, str):
            await model_refused(address=address, key_prefix=key.prefix, model=model[:200])
        raise


def _distinct_models(owner: str, model: str) -> tuple[int, bool]:
    """(distinct models refused to owner in the window, whether an alert is due now)."""
    window = settings.TOLLGATE_PROBE_WINDOW_SECONDS
    if not cache.add(f"probe:model:{_id(owner)}:{_id(model)}", 1, timeout=window):
        return 0, False
    distinct = _count(f"probe:models:{_id(owner)}", window)
    due = distinct >= settings.TOLLGATE_PROBE_MODEL_ALERT_AFTER and cache.add(
        f"probe:alerted:{_id(owner)}", 1, timeout=window)
    return distinct, due


async def model_refused(*, address: str | None, key_prefix: str | None, model: str) -> None:
    if address:
        address = address_block(address)
    owners = [(kind, value) for kind, value in (("address", address), ("key", key_prefix)) if value]
    for kind, value in owners:
        try:
            distinct, due = await asyncio.to_thread(_distinct_models, f"{kind}:{value}", model)
        except Exception:
            logger.warning("probe counters unavailable", exc_info=True)
            return
        if due:
            await security_alert("model_probing", {kind: value, "distinct_models": distinct, "last_model": model})
