"""Thin async views: each hands the request to the pipeline in its caller's format."""
from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from proxy.auth import authenticate
from proxy.errors import Caller, GatewayError, error_response, json_response
from proxy.pipeline import proxy_openai_chat
from proxy.routing import RouteInfo, resolve_route, routes_for_key


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return await proxy_openai_chat(request)


def _model_object(route: RouteInfo) -> dict:
    return {"id": route.model, "object": "model", "created": route.created, "owned_by": "tollgate"}


@csrf_exempt
async def models_list(request: HttpRequest) -> HttpResponse:
    """The routes this key may use, as OpenAI's model list."""
    try:
        if request.method != "GET":
            raise GatewayError("method_not_allowed", "Use GET for /v1/models.")
        key = await authenticate(request)
        routes = await routes_for_key(key)
    except GatewayError as error:
        return error_response(error, Caller.OPENAI)
    return json_response({"object": "list", "data": [_model_object(r) for r in routes]})


@csrf_exempt
async def model_detail(request: HttpRequest, model: str) -> HttpResponse:
    try:
        if request.method != "GET":
            raise GatewayError("method_not_allowed", "Use GET for /v1/models/{model}.")
        key = await authenticate(request)
        route = await resolve_route(key, model)
    except GatewayError as error:
        return error_response(error, Caller.OPENAI)
    return json_response(_model_object(route))


@csrf_exempt
async def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Unknown /v1/ paths: authenticate first, so an anonymous scanner learns nothing."""
    try:
        await authenticate(request)
        raise GatewayError("not_found", f"Unknown endpoint: {request.method} {request.path}.",
                           code="unknown_endpoint")
    except GatewayError as error:
        return error_response(error, Caller.OPENAI)
