"""Thin async views: each hands the request to the pipeline in its caller's format.

The views that answer by themselves are finished by the pipeline all the same
(`finished_as`: settled, recorded, measured), as their endpoint in the audit log.
"""
from __future__ import annotations

import math
from datetime import UTC, datetime

import orjson
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from proxy.errors import Caller, GatewayError, error_response, json_response
from proxy.parsing import check_model_name, read_json_object, validate_anthropic_messages
from proxy.pipeline import caller_of, client_ip, finished_as, proxy_anthropic_messages, proxy_openai_chat
from proxy.probing import authenticate_watched, resolve_route_watched
from proxy.providers.anthropic import AnthropicAdapter
from proxy.routing import RouteInfo, routes_for_key
from proxy.upstream import UpstreamError
from proxy.upstream import post as upstream_post


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return await proxy_openai_chat(request)


@csrf_exempt
async def messages(request: HttpRequest) -> HttpResponse:
    """Anthropic's Messages API, served by any provider kind (ANTHROPIC_BASE_URL points here)."""
    return await proxy_anthropic_messages(request)


def _model_object(route: RouteInfo, caller: Caller) -> dict:
    if caller is Caller.ANTHROPIC:
        created = datetime.fromtimestamp(route.created, UTC).isoformat().replace("+00:00", "Z")
        return {"type": "model", "id": route.model, "display_name": route.model, "created_at": created}
    return {"id": route.model, "object": "model", "created": route.created, "owned_by": "tollgate"}


@csrf_exempt
@finished_as("models.list")
async def models_list(request: HttpRequest) -> HttpResponse:
    """The routes this key may use, as OpenAI's (or, for Anthropic's SDK, Anthropic's) model list."""
    caller = caller_of(request)
    try:
        # Watched like every proxy path (bad keys counted and throttled), and before the method check.
        key = await authenticate_watched(request, client_ip(request))
        if request.method != "GET":
            raise GatewayError("method_not_allowed", "Use GET for /v1/models.")
        routes = await routes_for_key(key)
    except GatewayError as error:
        return error_response(error, caller)
    data = [_model_object(r, caller) for r in routes]
    if caller is Caller.ANTHROPIC:
        return json_response({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                              "last_id": data[-1]["id"] if data else None})
    return json_response({"object": "list", "data": data})


@csrf_exempt
@finished_as("models.retrieve")
async def model_detail(request: HttpRequest, model: str) -> HttpResponse:
    caller = caller_of(request)
    address = client_ip(request)
    try:
        key = await authenticate_watched(request, address)
        if request.method != "GET":
            raise GatewayError("method_not_allowed", "Use GET for /v1/models/{model}.")
        check_model_name(model)
        # Unknown names count as model probing, as on the chat paths.
        route = await resolve_route_watched(key, model, address)
    except GatewayError as error:
        return error_response(error, caller)
    return json_response(_model_object(route, caller))


def _estimate_tokens(body: dict) -> int:
    # Without an Anthropic deployment to ask: about four bytes a token, as providers' rules of thumb go.
    counted = {k: body.get(k) for k in ("system", "messages", "tools") if body.get(k) is not None}
    return max(1, math.ceil(len(orjson.dumps(counted)) / 4))


@csrf_exempt
@finished_as("messages.count_tokens", Caller.ANTHROPIC)
async def messages_count_tokens(request: HttpRequest) -> HttpResponse:
    """Anthropic's token counting: asked of the route's Anthropic deployment if it has one, else estimated."""
    address = client_ip(request)
    try:
        key = await authenticate_watched(request, address)
        if request.method != "POST":
            raise GatewayError("method_not_allowed", "Use POST for /v1/messages/count_tokens.")
        body = read_json_object(request)
        validate_anthropic_messages(body)
        route = await resolve_route_watched(key, body["model"], address)
    except GatewayError as error:
        return error_response(error, Caller.ANTHROPIC)
    for deployment in route.deployments:
        if deployment.provider.kind != "anthropic":
            continue
        adapter = AnthropicAdapter(deployment.provider)
        payload = {k: v for k, v in body.items() if k not in ("max_tokens", "stream", "temperature", "top_p",
                                                              "top_k", "stop_sequences", "metadata")}
        payload["model"] = deployment.upstream_model
        try:
            response, content = await upstream_post(adapter.count_tokens_url(), content=orjson.dumps(payload),
                                                    headers=adapter.request_headers({}), timeouts=adapter.timeout())
        except UpstreamError:
            continue
        if response.status_code < 400:
            return HttpResponse(content, status=200, content_type="application/json")
    return json_response({"input_tokens": _estimate_tokens(body)})


@csrf_exempt
@finished_as("unknown")
async def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Unknown /v1/ paths: authenticate first, so an anonymous scanner learns nothing."""
    caller = caller_of(request)
    try:
        await authenticate_watched(request, client_ip(request))
        raise GatewayError("not_found", f"Unknown endpoint: {request.method} {request.path}.",
                           code="unknown_endpoint")
    except GatewayError as error:
        return error_response(error, caller)
