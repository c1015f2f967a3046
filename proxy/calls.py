"""Steps 5 and 6 of the request path: choose the deployments, try them in order, fail over.

How one deployment is tried (same-format bytes or a translation, and the relay of its
answer) is proxy.relay's; what the client sees when none could answer is here.

Nothing here settles a budget or records an audit event: the call marks how the
request ends on its context (status, error class, usage), and proxy.pipeline
finishes the request (DESIGN §4).
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

import orjson
from django.http import HttpResponse

from proxy import breaker, tracing
from proxy.admission import model_not_priced
from proxy.bounds import output_bound, wire_of
from proxy.context import RequestContext
from proxy.errors import GatewayError
from proxy.formats import CallerFormat, Inbound
from proxy.providers import anthropic as anthropic_format
from proxy.providers.base import (
    CREDENTIAL_REFUSED,
    ProviderAdapter,
    ProviderError,
    credential_refused,
    scrubbed_error_body,
    upstream_error_detail,
)
from proxy.providers.ir import (
    ChatRequest,
    TranslationError,
)
from proxy.providers.registry import adapter_for
from proxy.relay import passthrough, translated
from proxy.routing import DeploymentInfo, RouteInfo, deployment_order

logger = logging.getLogger(__name__)

# How one deployment would be tried: (same wire format as the caller, the attempt), or a
# TranslationError when the request cannot be expressed for it (the deployment is skipped).
Prepare = Callable[[ProviderAdapter, DeploymentInfo], tuple[bool, Callable[[], Awaitable[HttpResponse]]]]


def _fails_over(error: ProviderError, route: RouteInfo) -> bool:
    """Connect errors, timeouts and streams cut before the first byte always fail over; statuses per route."""
    if error.status is None:
        return error.retryable
    return error.status in route.failover_statuses


# --- Choosing -----------------------------------------------------------------------------


def _no_deployment(route: RouteInfo, open_until: dict[int, float | None], what: str) -> GatewayError:
    now = time.time()
    waits = [u - now for u in open_until.values() if u is not None and u > now]
    headers = {"retry-after": str(max(1, math.ceil(min(waits))))} if waits else {}
    return GatewayError("unavailable", f"{what} has no healthy deployment right now; try again shortly.",
                        code="no_healthy_deployment", headers=headers)


async def plan_attempts(ctx: RequestContext, route: RouteInfo) -> tuple[list[DeploymentInfo], set[int]]:
    """The deployments to try in order, and which of them are half-open (need the trial token)."""
    if ctx.unpriced_deployments:
        # Under a cost budget, a deployment without a price cannot be charged: never chosen (issue #16).
        priced = tuple(d for d in route.deployments if d.id not in ctx.unpriced_deployments)
        if not priced:
            raise model_not_priced(route, list(route.deployments))
        route = replace(route, deployments=priced)
    if not route.deployments:
        raise GatewayError("unavailable", f"The model '{route.model}' has no enabled deployment right now.",
                           code="no_deployment")
    open_until = await breaker.open_until_many(d.id for d in route.deployments)
    now = time.time()
    states = {i: breaker.state_at(u, now) for i, u in open_until.items()}
    if all(state == "open" for state in states.values()):
        # Every deployment is out: the one that went out first may be tried now, one request at a
        # time, rather than the route refused until its cooldown ends (proxy.breaker, first_out).
        first, open_until = await breaker.first_out(open_until)
        if first is not None:
            states[first] = "half_open"
    usable = [d for d in route.deployments if states[d.id] != "open"]
    half_open = {i for i, s in states.items() if s == "half_open"}
    if ctx.pinned_deployment is not None:
        # A stored conversation lives with the deployment (credential) that made it: that one, or none.
        order = [d for d in route.deployments if d.id == ctx.pinned_deployment]
        if not order:
            raise GatewayError("invalid_request", f"The conversation continued here was answered by a deployment "
                               f"that no longer serves the model '{route.model}'.",
                               code="previous_response_not_found", param="previous_response_id")
        return order, half_open
    pinned = ctx.pinned_provider
    if pinned is None:
        order = deployment_order(route, deployments=usable)
        if not order:
            raise _no_deployment(route, open_until, f"The model '{route.model}'")
        return order, half_open
    pinned_all = [d for d in route.deployments if d.provider.name == pinned]
    if not pinned_all and not route.allow_pin_fallback:
        raise GatewayError("invalid_request", f"Provider '{pinned}' (X-Provider) does not serve the model "
                           f"'{route.model}'.", code="provider_not_in_route", param="X-Provider")
    order = deployment_order(route, deployments=[d for d in usable if d.provider.name == pinned])
    if route.allow_pin_fallback:
        order += deployment_order(route, deployments=[d for d in usable if d.provider.name != pinned])
    if not order:
        raise _no_deployment(route, open_until, f"Provider '{pinned}' (X-Provider) for '{route.model}'")
    return order, half_open


# --- Failover -----------------------------------------------------------------------------


async def call_chat(ctx: RequestContext, route: RouteInfo, inbound: Inbound) -> HttpResponse:
    """Serve a chat request, in the caller's format, from the route's deployments in failover order;
    the answer's status and error class are marked on ctx (the pipeline finishes the request)."""
    caller = inbound.format
    if ctx.max_output_tokens is None:
        # The output bound admission works out (here when admission did not run): it always goes upstream.
        ctx.max_output_tokens = output_bound(wire_of(ctx.caller.value, ctx.endpoint), inbound.body, route).tokens
    decoded: list[ChatRequest | TranslationError] = []

    def prepare(adapter: ProviderAdapter,
                deployment: DeploymentInfo) -> tuple[bool, Callable[[], Awaitable[HttpResponse]]]:
        if adapter.takes_as_is(caller.wire):
            return True, lambda: passthrough(ctx, inbound, adapter, deployment, route)
        if not decoded:  # once, and only when a deployment of another format comes up
            try:
                decoded.append(caller.decode_request(inbound.body, ctx.stream))
            except TranslationError as error:
                decoded.append(error)
        ir = decoded[0]
        if isinstance(ir, TranslationError):
            raise ir
        return False, lambda: translated(ctx, inbound, adapter, deployment, route, ir)

    return await failover(ctx, route, caller, prepare)


async def failover(ctx: RequestContext, route: RouteInfo, caller: CallerFormat, prepare: Prepare) -> HttpResponse:
    """Try the route's deployments in order until one answers (or fails in a way that does not fail
    over); a deployment the request cannot be translated for is skipped, so that a request only some
    formats can express (OpenAI's built-in tools) goes to a deployment that can take it, and is a 400
    when none can."""
    order, half_open = await plan_attempts(ctx, route)
    last_error: ProviderError | None = None
    last_same_format = False
    untranslatable: TranslationError | None = None
    first_started: float | None = None
    for deployment in order:
        if ctx.attempts > route.max_retries:
            break
        if first_started is not None and time.monotonic() - first_started > route.retry_budget_seconds:
            logger.info("request %s: retry budget of %.1fs used up", ctx.request_id, route.retry_budget_seconds)
            break
        adapter = adapter_for(deployment.provider)
        try:
            same_format, attempt = prepare(adapter, deployment)
        except TranslationError as error:
            untranslatable = error
            continue
        trial = deployment.id in half_open
        if trial and not await breaker.acquire_trial(deployment.id):
            continue
        if first_started is None:
            first_started = time.monotonic()
        failovers = ctx.failovers
        if ctx.attempts:
            ctx.failovers += 1
        ctx.attempts += 1
        ctx.deployment = deployment
        attempt_started = time.perf_counter()
        try:
            response = await attempt()
        except TranslationError as error:
            ctx.attempts -= 1
            ctx.failovers = failovers
            untranslatable = error
            continue
        except asyncio.CancelledError:
            tracing.attempt(ctx, deployment, attempt_started, "client_disconnected")
            if trial:  # the client left: its trial proved nothing, the next request may try
                await breaker.release_trial(deployment.id)
            raise
        except ProviderError as error:
            tracing.attempt(ctx, deployment, attempt_started, error.error_class)
            last_error, last_same_format = error, same_format
            fails_over = _fails_over(error, route)
            logger.info("request %s: attempt %d on %s failed: %s", ctx.request_id, ctx.attempts,
                        deployment.provider.name, error.error_class)
            if fails_over:
                await breaker.record_failure(deployment.id, error.message, retry_after=error.retry_after,
                                            trial=trial)
                continue
            break
        tracing.attempt(ctx, deployment, attempt_started, None)
        if trial:
            await breaker.record_success(deployment.id)
        # A stream's status is its first line, sent now; how it ends, its relay marks later.
        ctx.outcome(response.status_code)
        return response
    if last_error is None:
        if untranslatable is not None:
            raise untranslatable
        raise GatewayError("unavailable", f"The model '{route.model}' has no healthy deployment right now.",
                           code="no_healthy_deployment")
    response = _final_error_response(last_error, caller, same_format=last_same_format)
    ctx.outcome(response.status_code, last_error.error_class)
    return response


def _final_error_response(error: ProviderError, caller: CallerFormat, *, same_format: bool) -> HttpResponse:
    """What the client sees when no deployment could answer: never the provider's secrets.

    A refused credential is a 502 `upstream_authentication_failed` (proxy.providers.base logged
    the provider's text); any other upstream error keeps its status, type, code and param, with
    its message scrubbed (gateway_site.lib.secretfilter): the provider's own body for a caller
    of its format, the caller's shape otherwise.
    """
    if error.status is None or error.body is None:
        kind = "timeout" if error.error_class == "timeout" else "upstream"
        raise GatewayError(kind, error.message, code=error.error_class)
    status = error.status
    if error.error_class == CREDENTIAL_REFUSED or credential_refused(status, error.body):
        message = ("The provider refused the gateway's own credentials; this is the gateway operator's "
                   "problem, not your key's, and they can see the provider's answer in the gateway's log.")
        return HttpResponse(orjson.dumps(caller.error_body(502, message, CREDENTIAL_REFUSED)),
                            status=502, content_type="application/json")
    content = scrubbed_error_body(error.body) if same_format else None
    if content is not None:
        response = HttpResponse(content, status=status, content_type=error.content_type or "application/json")
    else:
        detail = upstream_error_detail(error.body)
        payload = caller.error_body(status, detail.message, detail.code or error.error_class)
        fields = payload.get("error")
        if isinstance(fields, dict):
            if "param" in fields:  # OpenAI's shape: the provider's type, code and param as they were
                fields.update(type=detail.type or fields["type"], param=detail.param)
            elif "type" in fields and detail.type in anthropic_format.ERROR_TYPES.values():
                fields["type"] = detail.type  # Anthropic's shape: its type, when the provider used one of them
        response = HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")
    if error.retry_after is not None:
        response["retry-after"] = str(math.ceil(error.retry_after))
    return response
