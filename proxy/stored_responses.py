"""Which deployment produced a stored Responses API response, for `previous_response_id`.

OpenAI keeps a stored response under the account (the credential) that made it, so a
follow-up naming it must go to the same deployment. The mapping lives in the shared
cache (every worker and node sees it) for as long as OpenAI keeps responses (30 days);
it is written only on routes that allow storing (ModelRoute.allow_store).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from gateway_site.lib.sharedcache import cache
from proxy.errors import GatewayError
from proxy.routing import RouteInfo

logger = logging.getLogger(__name__)

KEEP_SECONDS = 30 * 24 * 3600


def _cache_key(response_id: str) -> str:
    # Bounded size, whatever a client sends.
    return "responses:deployment:" + hashlib.sha256(response_id.encode("utf-8", "surrogatepass")).hexdigest()[:40]


async def remember(response_id: str, deployment_id: int) -> None:
    """Note that `deployment_id` answered `response_id` (never raises: a lost mapping only refuses a follow-up)."""
    try:
        await asyncio.to_thread(cache.set, _cache_key(response_id), deployment_id, KEEP_SECONDS)
    except Exception:
        logger.warning("could not remember which deployment answered a stored response", exc_info=True)


async def deployment_of(response_id: str) -> int | None:
    """The deployment that answered `response_id`, if the gateway knows it."""
    value = await asyncio.to_thread(cache.get, _cache_key(response_id))
    return value if isinstance(value, int) else None


async def responses_state(route: RouteInfo, body: dict[str, Any]) -> tuple[bool, int | None]:
    """(whether OpenAI keeps this response, the deployment a previous_response_id pins) for a Responses
    request on `route`; a 400 for state the route does not allow."""
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        raise GatewayError("invalid_request", "'store' must be a boolean.", param="store", code="invalid_value")
    if not route.allow_store:
        if store is True:
            raise GatewayError("invalid_request", f"The model '{route.model}' does not keep responses at the "
                               "provider: send 'store': false, or leave it out.", param="store",
                               code="store_not_allowed")
        for name in ("previous_response_id", "conversation"):
            if body.get(name) is not None:
                raise GatewayError("invalid_request", f"'{name}' needs responses kept by the provider, which the "
                                   f"model '{route.model}' does not allow; send the whole conversation in 'input' "
                                   "instead.", param=name, code="store_not_allowed")
        return False, None
    previous = body.get("previous_response_id")
    if previous is None:
        return store is not False, None
    if not isinstance(previous, str) or not previous or len(previous) > 200:
        raise GatewayError("invalid_request", "'previous_response_id' must be a response id.",
                           param="previous_response_id", code="invalid_value")
    try:
        deployment = await deployment_of(previous)
    except Exception:
        logger.warning("could not look up a previous response's deployment", exc_info=True)
        raise GatewayError("unavailable", "The gateway cannot look up the previous response right now; retry "
                           "shortly.", code="shared_cache_unavailable", headers={"retry-after": "1"}) from None
    if deployment is None:
        raise GatewayError("invalid_request", f"Previous response '{previous}' was not answered through the model "
                           f"'{route.model}' of this gateway in the last 30 days.", param="previous_response_id",
                           code="previous_response_not_found")
    return store is not False, deployment
