"""Token counting: Anthropic's `/v1/messages/count_tokens` and Gemini's `:countTokens`.

Asked of a provider that can count, in the route's deployment order: Anthropic
(`/v1/messages/count_tokens`), Gemini (`:countTokens`) and OpenAI itself
(`/v1/responses/input_tokens`), the request translated when the caller speaks
another format. Only where none of them can (a route served by OpenAI-compatible
servers or the sandbox, or every counting call failing) is the count an estimate,
and never silently: every answer says which in `x-tollgate-token-count` (`exact` or
`estimated`).

tiktoken is not used: it downloads its encodings at first use, and no package ships
o200k_base (the encoding of current OpenAI models) for it; the one that ships
cl100k_base counts only for retired models.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import orjson

from proxy.context import RequestContext
from proxy.errors import Caller
from proxy.formats import CALLER_FORMATS
from proxy.providers import anthropic as anthropic_format
from proxy.providers import gemini as gemini_format
from proxy.providers import responses as responses_format
from proxy.providers.anthropic import AnthropicAdapter
from proxy.providers.base import ProviderAdapter, ProviderError
from proxy.providers.gemini import GeminiAdapter
from proxy.providers.ir import ChatRequest, TranslationError
from proxy.providers.openai import OpenAIAdapter
from proxy.providers.registry import adapter_for
from proxy.relay import post_json
from proxy.routing import DeploymentInfo, RouteInfo, deployment_order

logger = logging.getLogger(__name__)

COUNT_HEADER = "x-tollgate-token-count"
# What Anthropic's count_tokens takes of a Messages body.
_ANTHROPIC_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers")
# What OpenAI's /v1/responses/input_tokens takes of a Responses body.
_OPENAI_FIELDS = ("model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "reasoning",
                  "text", "truncation")


def estimate(body: dict[str, Any], fields: tuple[str, ...]) -> int:
    """About four bytes a token, as providers' rules of thumb go."""
    counted = {k: body.get(k) for k in fields if body.get(k) is not None}
    return max(1, math.ceil(len(orjson.dumps(counted)) / 4))


class _Request:
    """The caller's body, and the internal representation of it once a provider of another format needs it."""

    def __init__(self, caller: Caller, body: dict[str, Any]) -> None:
        self.caller = caller
        self.body = body
        self._ir: ChatRequest | TranslationError | None = None

    def ir(self) -> ChatRequest:
        if self._ir is None:
            try:
                self._ir = CALLER_FORMATS[self.caller].decode_request(self.body, False)
            except TranslationError as error:
                self._ir = error
        if isinstance(self._ir, TranslationError):
            raise self._ir
        return self._ir


def _anthropic_payload(request: _Request, deployment: DeploymentInfo, route: RouteInfo) -> dict[str, Any]:
    if request.caller is Caller.ANTHROPIC:
        body = request.body
    else:
        body = anthropic_format.encode_request(request.ir(), model=deployment.upstream_model,
                                               default_max_tokens=route.default_max_tokens, stream=False)
    return {**{k: body[k] for k in _ANTHROPIC_FIELDS if k in body}, "model": deployment.upstream_model}


def _gemini_payload(request: _Request, deployment: DeploymentInfo) -> dict[str, Any]:
    inner = request.body if request.caller is Caller.GEMINI else gemini_format.encode_request(
        request.ir(), model=deployment.upstream_model)
    inner = {k: v for k, v in inner.items() if k != "model"}
    # The whole request (system instruction and tools too), as countTokens takes it.
    return {"generateContentRequest": {"model": f"models/{deployment.upstream_model}", **inner}}


def _openai_payload(request: _Request, deployment: DeploymentInfo) -> dict[str, Any]:
    body = responses_format.encode_request(request.ir(), model=deployment.upstream_model, stream=False)
    return {k: body[k] for k in _OPENAI_FIELDS if k in body}


def _counted(content: bytes, name: str) -> int | None:
    try:
        value = orjson.loads(content).get(name)
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


async def _ask(ctx: RequestContext, adapter: ProviderAdapter, request: _Request, deployment: DeploymentInfo,
               route: RouteInfo) -> int | None:
    """The provider's own count, or None where it cannot count."""
    if isinstance(adapter, AnthropicAdapter):
        payload, url, field = _anthropic_payload(request, deployment, route), adapter.count_tokens_url(), \
            "input_tokens"
    elif isinstance(adapter, GeminiAdapter):
        payload = _gemini_payload(request, deployment)
        url, field = adapter.model_url(deployment.upstream_model, "countTokens"), "totalTokens"
    elif isinstance(adapter, OpenAIAdapter) and deployment.provider.kind == "openai":
        # OpenAI's own API counts Responses input; compatible servers and the sandbox cannot.
        payload, url, field = _openai_payload(request, deployment), \
            f"{deployment.provider.base_url}/responses/input_tokens", "input_tokens"
    else:
        return None
    _, content = await post_json(ctx, adapter, url, payload, adapter.request_headers({}))
    return _counted(content, field)


async def count_tokens(ctx: RequestContext, route: RouteInfo, caller: Caller, body: dict[str, Any],
                       fields: tuple[str, ...]) -> tuple[int, bool]:
    """(tokens, exact): from the first deployment that can count, else an estimate over `fields`."""
    request = _Request(caller, body)
    for deployment in deployment_order(route):
        adapter = adapter_for(deployment.provider)
        try:
            counted = await _ask(ctx, adapter, request, deployment, route)
        except (ProviderError, TranslationError) as error:
            logger.info("token count on %s failed: %s", deployment.provider.name, error)
            continue
        if counted is not None:
            ctx.deployment = deployment
            return counted, True
    return estimate(body, fields), False
