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
from proxy.context import RequestContext
from proxy.errors import GatewayError

logger = logging.getLogger("tollgate.budgets")

UNAVAILABLE_MESSAGE = (
    "The gateway cannot check rate limits and budgets right now (its shared counter store is "
    "unreachable), so it refuses requests rather than let them go unmetered. Retry shortly."
)
IMAGE_TOKENS = 1600  # a generous bound for one image part; providers charge ~85-1600


def _max_output_tokens(body: dict[str, Any], default: int) -> int:
    config = body.get("generationConfig")  # Gemini
    for value in (body.get("max_completion_tokens"), body.get("max_tokens"), body.get("max_output_tokens"),
                  config.get("maxOutputTokens") if isinstance(config, dict) else None):
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return default


def _text_tokens(text: str) -> int:
    # Deliberately generous: 3 characters per token where English averages 4.
    return len(text) // 3 + 1


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, str):
                total += _text_tokens(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("image_url", "image", "input_image", "document", "file", "input_audio"):
                    total += IMAGE_TOKENS
                if "inlineData" in part or "fileData" in part:  # Gemini's media parts
                    total += IMAGE_TOKENS
                for name in ("functionCall", "functionResponse"):  # Gemini's tool calls and results
                    if name in part:
                        total += _text_tokens(str(part[name]))
                for name in ("text", "content", "input", "arguments", "output"):
                    value = part.get(name)
                    if isinstance(value, str):
                        total += _text_tokens(value)
                    elif isinstance(value, list | dict):
                        total += _content_tokens(value if isinstance(value, list) else [value])
    elif isinstance(content, dict):
        total += _content_tokens([content])
    return total


def _input_tokens(value: Any) -> int:
    """A Responses `input` (a string or items) or an embeddings `input` (strings or token ids)."""
    if isinstance(value, str):
        return _text_tokens(value)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if isinstance(item, int):
            total += 1  # a token id
        elif isinstance(item, list):
            total += len(item)
        elif isinstance(item, str):
            total += _text_tokens(item)
        elif isinstance(item, dict):
            total += 4 + _content_tokens([item])
    return total


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """An upper-side estimate of the prompt's tokens, without a tokenizer (microseconds)."""
    total = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            total += 4
            if isinstance(message, dict):
                total += _content_tokens(message.get("content"))
                for call in message.get("tool_calls") or ():
                    if isinstance(call, dict):
                        total += _text_tokens(str(call.get("function", "")))
    system = body.get("system")
    if system is not None:
        total += _content_tokens(system)
    # The Responses API's input items and instructions; an embeddings request's input.
    total += _input_tokens(body.get("input")) + _content_tokens(body.get("instructions"))
    contents = body.get("contents")  # Gemini
    if isinstance(contents, list):
        for content in contents:
            total += 4
            if isinstance(content, dict):
                total += _content_tokens(content.get("parts"))
    # Gemini's embeddings: one content, or a batch of requests each with its content.
    batch = body.get("requests")
    requests: list[Any] = batch if isinstance(batch, list) else [body]
    for request in requests:
        content = request.get("content") if isinstance(request, dict) else None
        if isinstance(content, dict):
            total += _content_tokens(content.get("parts"))
    instruction = body.get("systemInstruction")
    if isinstance(instruction, dict):
        total += _content_tokens(instruction.get("parts"))
    tools = body.get("tools")
    if tools:
        total += _text_tokens(str(tools))
    return total


async def admit(ctx: RequestContext, body: dict[str, Any], *, output_tokens: int | None = None) -> None:
    """Check rate limits and reserve budget; raise GatewayError('rate_limit', ...) to refuse.
    `output_tokens`: the answer's worst case when the body does not say (embeddings: 0)."""
    if ctx.key is None or ctx.route is None:
        return
    limits = await limits_for_key(ctx.key)
    if limits.empty:
        return
    prompt = estimate_prompt_tokens(body)
    max_output = (_max_output_tokens(body, ctx.route.default_max_tokens) if output_tokens is None
                  else output_tokens)
    cost = 0
    if limits.needs_cost:
        prices = await price_table()
        # The route may be served by any of its deployments: hold the dearest.
        cost = max((prices.worst_case(d.upstream_model, prompt, max_output, provider=d.provider.name) or 0
                    for d in ctx.route.deployments), default=0)
    try:
        ctx.admission = await budget_reserve(key=ctx.key, limits=limits, request_id=ctx.request_id,
                                             tokens=prompt + max_output, cost=cost)
    except LimitExceeded as refused:
        ctx.admission = refused.admission
        raise GatewayError("rate_limit", refused.message, code=refused.code, status=refused.status,
                           headers={"retry-after": str(refused.retry_after)}) from None
    except LimitsUnavailable as exc:
        if settings.TOLLGATE_LIMITS_FAIL_OPEN:
            logger.warning("request %s admitted unmetered (fail open): %s", ctx.request_id, exc)
            ctx.admission = budget_admit_unmetered(key=ctx.key, limits=limits, request_id=ctx.request_id)
            return
        logger.error("request %s refused: limits unavailable: %s", ctx.request_id, exc)
        raise GatewayError("unavailable", UNAVAILABLE_MESSAGE, code="limits_unavailable", status=503,
                           headers={"retry-after": "1"}) from None


async def price_usage(ctx: RequestContext) -> None:
    """The request's cost from its real usage, each token class at its own price (the audit
    event records it; settle charges it). An unpriced model is noted for the health page."""
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
    return admission.headers()
