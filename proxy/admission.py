"""Step 4 of the request path (admit) and the settling half of step 8.

The proxy side of budgets and rate limits (docs/budgets.md): works out a request's
worst case, asks `budgets` to admit it before the upstream call, and to settle the
real usage afterwards. A consumer without budgets or rate limits costs one lookup
in this worker's memory.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from django.conf import settings

from budgets.admission import budget_admit_unmetered, budget_reserve, budget_settle
from budgets.holds import Admission, LimitExceeded, LimitsUnavailable
from budgets.pricing import TokenUsage, price_table, unpriced_seen_add
from budgets.selectors import limits_for_key
from proxy.bounds import estimate_prompt_tokens, output_bound, wire_of
from proxy.context import RequestContext
from proxy.errors import GatewayError
from proxy.routing import DeploymentInfo, RouteInfo

logger = logging.getLogger("tollgate.budgets")

UNAVAILABLE_MESSAGE = (
    "The gateway cannot check rate limits and budgets right now (its shared counter store is "
    "unreachable), so it refuses requests rather than let them go unmetered. Retry shortly."
)
def model_not_priced(route: RouteInfo, unpriced: list[DeploymentInfo]) -> GatewayError:
    """The refusal of a request under a cost budget that no deployment of its route can be charged for."""
    names = ", ".join(f"'{d.upstream_model}' at '{d.provider.name}'" for d in unpriced) or "(none)"
    return GatewayError(
        "invalid_request",
        f"The model '{route.model}' cannot be charged to this consumer's cost budget: no price is known for "
        f"{names}. An administrator can add a price for the model, or a fallback price (model '*') for its "
        f"provider, under Model prices (docs/budgets.md, \"Unpriced models\").",
        code="model_not_priced", param="model")


async def _worst_cost(ctx: RequestContext, route: RouteInfo, prompt: int, output: int, *, hard: bool) -> int:
    """What the request may cost at the dearest deployment that can serve it. Under a `hard` cost budget
    the unpriced ones are marked on ctx for routing to skip (the budget cannot charge them: unpriced
    is not free); either way they are noted for the health page. A soft budget never refuses."""
    prices = await price_table()
    costs, unpriced = [], []
    for d in route.deployments:
        cost = prices.worst_case(d.upstream_model, prompt, output, provider=d.provider.name)
        if cost is None:
            unpriced.append(d)
            await unpriced_seen_add(d.upstream_model, d.provider.name)
        else:
            costs.append(cost)
    if unpriced and hard:
        ctx.unpriced_deployments = frozenset(d.id for d in unpriced)
        if not costs:
            raise model_not_priced(route, unpriced)
    return max(costs, default=0)


async def admit(ctx: RequestContext, body: dict[str, Any]) -> None:
    """Work out the request's worst case, check rate limits and reserve it against budgets; raise
    GatewayError('rate_limit', ...) to refuse, ('invalid_request', ...) for conflicting output bounds
    or a model that a cost budget cannot charge."""
    if ctx.key is None or ctx.route is None:
        return
    # Worked out for every request: the output bound goes upstream whether or not budgets apply.
    bound = output_bound(wire_of(ctx.caller.value, ctx.endpoint), body, ctx.route)
    ctx.max_output_tokens = bound.tokens
    ctx.prompt_estimate = prompt = estimate_prompt_tokens(body)
    ctx.reserved_tokens = prompt + bound.total
    # Only the budgets of this route: a route-scoped one ("$50/day of opus") neither holds nor
    # charges a request on another route (filtered in memory from the key's cached limits).
    limits = await limits_for_key(ctx.key, route=ctx.route.model)
    if limits.empty:
        return
    cost = 0
    if limits.needs_cost:
        hard = any(b.metric == "cost_usd" and b.hard for b in limits.budgets)
        cost = await _worst_cost(ctx, ctx.route, prompt, bound.total, hard=hard)
    try:
        ctx.admission = await budget_reserve(key=ctx.key, limits=limits, request_id=ctx.request_id,
                                             tokens=ctx.reserved_tokens, cost=cost)
    except LimitExceeded as refused:
        ctx.admission = refused.admission
        raise GatewayError("rate_limit", refused.message, code=refused.code, status=refused.status,
                           headers={"retry-after": str(refused.retry_after)}) from None
    except LimitsUnavailable as exc:
        # A failover (Cluster, Sentinel) is refused even when failing open: it lasts seconds,
        # and the new master may lack holds the old one had acknowledged.
        if settings.TOLLGATE_LIMITS_FAIL_OPEN and not exc.failover:
            logger.warning("request %s admitted unmetered (fail open): %s", ctx.request_id, exc)
            ctx.admission = budget_admit_unmetered(key=ctx.key, limits=limits, request_id=ctx.request_id)
            return
        logger.error("request %s refused: limits unavailable: %s", ctx.request_id, exc)
        raise GatewayError("unavailable", UNAVAILABLE_MESSAGE, code="limits_unavailable", status=503,
                           headers={"retry-after": "1"}) from None


def usage_complete(ctx: RequestContext) -> None:
    """Mark where the usage came from, and fill in what a provider that took the request never
    reported (the client left, the stream was cut, the call timed out): the prompt at admission's
    estimate, the output at a token per 4 bytes of the answer relayed so far. The provider bills
    what it processed whether or not it told us, so the request is charged for it."""
    reported = ctx.prompt_tokens is not None, ctx.completion_tokens is not None
    # A provider whose stream opened with its own error event, before saying or sending anything,
    # refused the request (overloaded, ...): no bill to estimate.
    refused = ctx.error_class == "upstream_stream_error" and not any(reported) and not ctx.relayed_bytes
    if all(reported) or not ctx.upstream_started or refused:
        ctx.usage_source = "provider" if any(reported) else None
        return
    if ctx.prompt_tokens is None:
        ctx.prompt_tokens = ctx.prompt_estimate
    if ctx.completion_tokens is None:
        ctx.completion_tokens = -(-ctx.relayed_bytes // 4)
    ctx.usage_source = "estimated"


async def price_usage(ctx: RequestContext) -> None:
    """The request's cost from its real usage, each token class at its own price (the audit
    event records it; settle charges it). An unpriced model is noted for the health page."""
    usage_complete(ctx)
    prompt = ctx.prompt_tokens or 0
    completion = ctx.completion_tokens or 0
    if ctx.deployment is None or not (prompt or completion):
        return
    usage = TokenUsage(input_tokens=prompt, output_tokens=completion, cache_read_tokens=ctx.cache_read_tokens,
                       cache_write_tokens=ctx.cache_write_tokens, cache_write_1h_tokens=ctx.cache_write_1h_tokens,
                       reasoning_tokens=ctx.reasoning_tokens)
    model, provider = ctx.deployment.upstream_model, ctx.deployment.provider.name
    ctx.cost_microusd = (await price_table()).cost(model, usage, provider=provider)
    if ctx.cost_microusd is None:
        await unpriced_seen_add(model, provider)


async def _settle(ctx: RequestContext) -> None:
    started = time.perf_counter()
    try:
        admission = ctx.admission
        if isinstance(admission, Admission):
            await budget_settle(admission=admission, prompt_tokens=ctx.prompt_tokens or 0,
                                completion_tokens=ctx.completion_tokens or 0,
                                requests=1 if ctx.attempts else 0, cost=ctx.cost_microusd or 0)
    except Exception:
        logger.exception("request %s: settle failed", ctx.request_id)
    finally:
        ctx.stages["settle"] = time.perf_counter() - started


def settle_start(ctx: RequestContext) -> asyncio.Task:
    """Charge real usage and release the reservation, after price_usage; runs once per request, also
    on failure. A task of its own: it goes on while the audit event is written, and a client that
    disconnects cancels the request, never its settlement. Never raises (failures are logged)."""
    return asyncio.get_running_loop().create_task(_settle(ctx))


def limit_headers(ctx: RequestContext) -> dict[str, str]:
    """x-ratelimit-* headers for the response."""
    admission = ctx.admission
    if not isinstance(admission, Admission):
        return {}
    headers = admission.headers()
    # What this request holds against its token budgets and limits until it settles (prompt estimate
    # plus n x the output bound sent upstream), so a client can see why it was admitted or refused.
    headers["x-ratelimit-reserved-tokens"] = str(ctx.reserved_tokens)
    return headers
