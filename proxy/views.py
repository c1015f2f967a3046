"""Thin async views: each hands the request to the pipeline in its caller's format.

The views that answer by themselves are finished by the pipeline all the same
(`finished_as`: settled, recorded, measured), as their endpoint in the audit log.
"""
from __future__ import annotations

from datetime import UTC, datetime

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from proxy.auth import authenticate
from proxy.context import RequestContext
from proxy.counting import COUNT_HEADER, count_tokens
from proxy.errors import Caller, GatewayError, error_response, json_response
from proxy.parsing import check_model_name, read_json_object, validate_anthropic_messages, validate_gemini_generate
from proxy.pipeline import (
    caller_of,
    client_ip,
    finished_as,
    proxy_anthropic_messages,
    proxy_gemini_embed,
    proxy_gemini_generate,
    proxy_openai_chat,
    proxy_openai_embeddings,
    proxy_openai_responses,
)
from proxy.probing import authenticate_watched, resolve_route_watched
from proxy.routing import RouteInfo, resolve_route, routes_for_key

GEMINI_METHODS = ("generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents")


@csrf_exempt
async def chat_completions(request: HttpRequest) -> HttpResponse:
    return await proxy_openai_chat(request)


@csrf_exempt
async def messages(request: HttpRequest) -> HttpResponse:
    """Anthropic's Messages API, served by any provider kind (ANTHROPIC_BASE_URL points here)."""
    return await proxy_anthropic_messages(request)


@csrf_exempt
async def responses(request: HttpRequest) -> HttpResponse:
    """OpenAI's Responses API (Codex CLI), passed through to OpenAI, translated for any other provider."""
    return await proxy_openai_responses(request)


@csrf_exempt
async def embeddings(request: HttpRequest) -> HttpResponse:
    return await proxy_openai_embeddings(request)


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
    if caller is Caller.GEMINI:  # the google-genai SDK on /v1 (api_version="v1")
        return json_response({"models": [_gemini_model(r) for r in routes]})
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
    if caller is Caller.GEMINI:
        return json_response(_gemini_model(route))
    return json_response(_model_object(route, caller))


@csrf_exempt
@finished_as("messages.count_tokens", Caller.ANTHROPIC)
async def messages_count_tokens(request: HttpRequest) -> HttpResponse:
    """Anthropic's token counting, asked of a deployment that can count (proxy.counting), else estimated."""
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
    ctx = RequestContext(caller=Caller.ANTHROPIC, endpoint="messages.count_tokens")
    tokens, exact = await count_tokens(ctx, route, Caller.ANTHROPIC, body, ("system", "messages", "tools"))
    return json_response({"input_tokens": tokens}, headers={COUNT_HEADER: "exact" if exact else "estimated"})


# --- Gemini's API (google-genai SDK, Gemini CLI) -------------------------------------------


def _gemini_model(route: RouteInfo) -> dict:
    return {"name": f"models/{route.model}", "version": "1", "displayName": route.model,
            "description": f"The gateway's route '{route.model}'.",
            "supportedGenerationMethods": list(GEMINI_METHODS)}


@csrf_exempt
async def gemini_model_method(request: HttpRequest, model: str, method: str) -> HttpResponse:
    """POST /v1beta/models/{model}:{method} (and /v1/models/...): the route is named in the URL."""
    if method in ("generateContent", "streamGenerateContent"):
        return await proxy_gemini_generate(request, model, stream=method == "streamGenerateContent")
    if method == "countTokens":
        return await gemini_count_tokens(request, model=model)
    return await proxy_gemini_embed(request, model, method)


@finished_as("gemini.countTokens", Caller.GEMINI)
async def gemini_count_tokens(request: HttpRequest, model: str) -> HttpResponse:
    """Gemini's countTokens, asked of a deployment that can count (proxy.counting), else estimated."""
    address = client_ip(request)
    try:
        # The key before the method: an unauthenticated caller learns nothing from 405 vs 401.
        key = await authenticate_watched(request, address)
        if request.method != "POST":
            raise GatewayError("method_not_allowed", f"Use POST for models/{model}:countTokens.")
        body = read_json_object(request)
        # {"contents": [...]} or the whole request: {"generateContentRequest": {...}}.
        inner = body.get("generateContentRequest", body)
        if not isinstance(inner, dict):
            raise GatewayError("invalid_request", "'generateContentRequest' must be an object.",
                               param="generateContentRequest")
        validate_gemini_generate(inner)
        route = await resolve_route_watched(key, model, address)
    except GatewayError as error:
        return error_response(error, Caller.GEMINI)
    ctx = RequestContext(caller=Caller.GEMINI, endpoint="gemini.countTokens")
    fields = ("contents", "systemInstruction", "tools")
    tokens, exact = await count_tokens(ctx, route, Caller.GEMINI, inner, fields)
    return json_response({"totalTokens": tokens}, headers={COUNT_HEADER: "exact" if exact else "estimated"})


@csrf_exempt
@finished_as("models.list", Caller.GEMINI)
async def gemini_models_list(request: HttpRequest) -> HttpResponse:
    """The routes this key may use, in Gemini's shape (GET /v1beta/models)."""
    try:
        if request.method != "GET":
            raise GatewayError("method_not_allowed", "Use GET for /v1beta/models.")
        key = await authenticate(request)
        routes = await routes_for_key(key)
    except GatewayError as error:
        return error_response(error, Caller.GEMINI)
    return json_response({"models": [_gemini_model(r) for r in routes]})


@csrf_exempt
@finished_as("models.retrieve", Caller.GEMINI)
async def gemini_model_detail(request: HttpRequest, model: str) -> HttpResponse:
    try:
        if request.method != "GET":
            raise GatewayError("method_not_allowed", "Use GET for /v1beta/models/{model}.")
        key = await authenticate(request)
        route = await resolve_route(key, model.removeprefix("models/"))
    except GatewayError as error:
        return error_response(error, Caller.GEMINI)
    return json_response(_gemini_model(route))


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
