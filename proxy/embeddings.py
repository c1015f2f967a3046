"""`POST /v1/embeddings` (OpenAI's format), served by OpenAI-format and Gemini providers.

To OpenAI, OpenAI-compatible servers and the sandbox the body passes through with only
`model` replaced. To Gemini it becomes `:embedContent` (one input) or `:batchEmbedContents`
(a list, at most 100 a call, as Google allows), and the vectors come back in OpenAI's shape,
as floats or as base64 (little-endian float32, which the official SDK asks for). Gemini
reports no tokens for embeddings: the usage is an estimate, and the answer says so
(`x-tollgate-token-count: estimated`). Anthropic has no embeddings: a 400 unless the route
has another deployment. Failover is the chat path's (proxy.calls.failover).

Gemini's own `:embedContent` / `:batchEmbedContents`, sent to the gateway, go to Gemini as they
are and to OpenAI-format providers as one `/v1/embeddings` call.
"""
from __future__ import annotations

import base64
import math
import struct
from typing import Any

import orjson
from django.http import HttpResponse

from proxy.calls import failover
from proxy.context import RequestContext
from proxy.errors import GatewayError
from proxy.formats import Inbound
from proxy.providers.base import ProviderAdapter, ProviderError
from proxy.providers.gemini import GeminiAdapter
from proxy.providers.ir import TranslationError
from proxy.providers.openai import OpenAIAdapter
from proxy.relay import post_json
from proxy.routing import DeploymentInfo, RouteInfo

COUNT_HEADER = "x-tollgate-token-count"
GEMINI_BATCH = 100  # batchEmbedContents' limit of requests per call


def _estimate(text: str) -> int:
    # About four bytes a token, as providers' rules of thumb go.
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def _texts(body: dict[str, Any]) -> list[str]:
    """The inputs as texts; token ids only OpenAI's tokenizer can read."""
    items = body["input"]
    if isinstance(items, str):
        return [items]
    if all(isinstance(item, str) for item in items):
        return items
    raise TranslationError("Token ids cannot be embedded by a Gemini provider (it takes text); send the text "
                           "itself, or use a route served by OpenAI.", param="input")


def _vector(values: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def _values(item: Any) -> list[float]:
    values = item.get("values") if isinstance(item, dict) else None
    if not isinstance(values, list):
        raise TypeError("an embedding without values")
    return values


async def _gemini(ctx: RequestContext, inbound: Inbound, adapter: GeminiAdapter, deployment: DeploymentInfo,
                  texts: list[str]) -> HttpResponse:
    body = inbound.body
    upstream = deployment.upstream_model
    config: dict[str, Any] = {}
    if body.get("dimensions") is not None:
        config["outputDimensionality"] = body["dimensions"]
    headers = adapter.request_headers({})
    vectors: list[list[float]] = []
    try:
        if len(texts) == 1 and isinstance(body["input"], str):
            payload = {"content": {"parts": [{"text": texts[0]}]}, **config}
            _, content = await post_json(ctx, adapter, adapter.model_url(upstream, "embedContent"), payload, headers)
            vectors.append(_values(orjson.loads(content).get("embedding")))
        else:
            for start in range(0, len(texts), GEMINI_BATCH):
                payload = {"requests": [{"model": f"models/{upstream}", "content": {"parts": [{"text": text}]},
                                         **config} for text in texts[start:start + GEMINI_BATCH]]}
                _, content = await post_json(ctx, adapter, adapter.model_url(upstream, "batchEmbedContents"),
                                             payload, headers)
                vectors.extend(_values(item) for item in orjson.loads(content).get("embeddings") or [])
    except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
        raise ProviderError(f"Provider '{deployment.provider.name}' sent an answer that is not an embedding "
                            f"({exc.__class__.__name__}).", error_class="upstream_invalid_answer", retryable=False,
                            status=502) from None
    if len(vectors) != len(texts):
        raise ProviderError(f"Provider '{deployment.provider.name}' sent {len(vectors)} embeddings for "
                            f"{len(texts)} inputs.", error_class="upstream_invalid_answer", retryable=False,
                            status=502)
    tokens = sum(_estimate(text) for text in texts)
    ctx.record_tokens(tokens, 0)
    encoding = body.get("encoding_format") or "float"
    out = orjson.dumps({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": _vector(v, encoding)} for i, v in enumerate(vectors)],
        "model": upstream,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
    ctx.capture_response(out)
    response = HttpResponse(out, status=200, content_type="application/json")
    response[COUNT_HEADER] = "estimated"
    return response


async def _openai(ctx: RequestContext, inbound: Inbound, adapter: OpenAIAdapter,
                  deployment: DeploymentInfo) -> HttpResponse:
    payload = {**inbound.body, "model": deployment.upstream_model}
    response, content = await post_json(ctx, adapter, adapter.embeddings_url(), payload,
                                        adapter.request_headers(inbound.headers))
    try:
        usage = orjson.loads(content).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        usage = None
    if isinstance(usage, dict):
        ctx.record_tokens(usage.get("prompt_tokens"), 0)
    ctx.capture_response(content)
    answer = HttpResponse(content, status=response.status_code,
                          content_type=response.headers.get("content-type", "application/json"))
    answer[COUNT_HEADER] = "exact" if isinstance(usage, dict) else "estimated"
    return answer


async def call_embeddings(ctx: RequestContext, route: RouteInfo, inbound: Inbound) -> HttpResponse:
    """Serve an embeddings request from the route's deployments in failover order."""
    def prepare(adapter: ProviderAdapter, deployment: DeploymentInfo) -> tuple[bool, Any]:
        if isinstance(adapter, OpenAIAdapter):
            return True, lambda: _openai(ctx, inbound, adapter, deployment)
        if isinstance(adapter, GeminiAdapter):
            texts = _texts(inbound.body)
            return False, lambda: _gemini(ctx, inbound, adapter, deployment, texts)
        raise TranslationError(f"Provider '{deployment.provider.name}' ({deployment.provider.kind}) has no "
                               f"embeddings; the model '{route.model}' needs an OpenAI or Gemini deployment for "
                               "them.", param="model")

    return await failover(ctx, route, inbound.format, prepare)


# --- Gemini's embedContent / batchEmbedContents, sent to the gateway ---------------------------


def gemini_requests(body: dict[str, Any], method: str) -> list[dict[str, Any]]:
    """The EmbedContentRequests of a Gemini embeddings body, checked (one for embedContent)."""
    requests: Any
    if method == "embedContent":
        requests = [body]
    else:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests or len(requests) > GEMINI_BATCH:
            raise GatewayError("invalid_request", f"'requests' must be a list of 1 to {GEMINI_BATCH} "
                               "EmbedContentRequests.", param="requests")
    for index, request in enumerate(requests):
        where = "" if method == "embedContent" else f"requests[{index}]."
        content = request.get("content") if isinstance(request, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list) or not any(isinstance(p, dict) and isinstance(p.get("text"), str)
                                                  for p in parts):
            raise GatewayError("invalid_request", f"'{where}content' must have parts with text to embed.",
                               param=f"{where}content")
        dimensions = request.get("outputDimensionality")
        if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)
                                       or dimensions < 1):
            raise GatewayError("invalid_request", f"'{where}outputDimensionality' must be a positive integer.",
                               param=f"{where}outputDimensionality")
    return requests


def _gemini_text(request: dict[str, Any]) -> str:
    # The text parts of a content, joined as Gemini embeds them.
    return "\n".join(p["text"] for p in request["content"]["parts"] if isinstance(p, dict)
                     and isinstance(p.get("text"), str))


async def _gemini_as_is(ctx: RequestContext, inbound: Inbound, adapter: GeminiAdapter, deployment: DeploymentInfo,
                        method: str) -> HttpResponse:
    upstream = deployment.upstream_model
    body = inbound.body
    if method == "batchEmbedContents":
        # Each request names its model, which must be the URL's.
        body = {**body, "requests": [{**r, "model": f"models/{upstream}"} for r in body["requests"]]}
    response, content = await post_json(ctx, adapter, adapter.model_url(upstream, method), body,
                                        adapter.request_headers({}))
    ctx.record_tokens(sum(_estimate(_gemini_text(r)) for r in gemini_requests(inbound.body, method)), 0)
    ctx.capture_response(content)
    answer = HttpResponse(content, status=response.status_code, content_type="application/json")
    answer[COUNT_HEADER] = "estimated"  # Gemini counts no tokens for embeddings
    return answer


async def _gemini_by_openai(ctx: RequestContext, inbound: Inbound, adapter: OpenAIAdapter,
                            deployment: DeploymentInfo, method: str) -> HttpResponse:
    requests = gemini_requests(inbound.body, method)
    dimensions = {r.get("outputDimensionality") for r in requests}
    if len(dimensions) > 1:
        raise TranslationError("The requests ask for different outputDimensionality, which one OpenAI call "
                               "cannot give; send them separately.", param="requests")
    payload: dict[str, Any] = {"model": deployment.upstream_model, "input": [_gemini_text(r) for r in requests],
                               "encoding_format": "float"}
    if (size := dimensions.pop()) is not None:
        payload["dimensions"] = size
    _, content = await post_json(ctx, adapter, adapter.embeddings_url(), payload, adapter.request_headers({}))
    try:
        data = orjson.loads(content)
        vectors = [item["embedding"] for item in sorted(data["data"], key=lambda item: item["index"])]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ProviderError(f"Provider '{deployment.provider.name}' sent an answer that is not an embedding "
                            f"({exc.__class__.__name__}).", error_class="upstream_invalid_answer", retryable=False,
                            status=502) from None
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    ctx.record_tokens(usage.get("prompt_tokens"), 0)
    out = orjson.dumps({"embedding": {"values": vectors[0]}} if method == "embedContent"
                       else {"embeddings": [{"values": v} for v in vectors]})
    ctx.capture_response(out)
    answer = HttpResponse(out, status=200, content_type="application/json")
    answer[COUNT_HEADER] = "exact" if usage else "estimated"
    return answer


def gemini_embeddings_call(method: str) -> Any:
    """The call (for proxy.pipeline) that serves a Gemini embeddings body of `method`."""
    async def call(ctx: RequestContext, route: RouteInfo, inbound: Inbound) -> HttpResponse:
        def prepare(adapter: ProviderAdapter, deployment: DeploymentInfo) -> tuple[bool, Any]:
            if isinstance(adapter, GeminiAdapter):
                return True, lambda: _gemini_as_is(ctx, inbound, adapter, deployment, method)
            if isinstance(adapter, OpenAIAdapter):
                return False, lambda: _gemini_by_openai(ctx, inbound, adapter, deployment, method)
            raise TranslationError(f"Provider '{deployment.provider.name}' ({deployment.provider.kind}) has no "
                                   f"embeddings; the model '{route.model}' needs a Gemini or OpenAI deployment "
                                   "for them.", param="model")

        return await failover(ctx, route, inbound.format, prepare)

    return call
