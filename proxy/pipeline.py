"""The request path in order: authenticate, parse, route, call, answer, finish (DESIGN §1).

`request_finish` is the one place a request ends: its budget settled and its audit
event recorded, once, before the answer (or the stream's last event) is released.
The chat views go through the whole path; the other proxy views (model list,
token counting, unknown paths) are finished the same way by `finished_as`.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import orjson
from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse

from budgets.selectors import KeyInfo
from gateway_site.lib.clientaddr import client_address
from gateway_site.lib.db import database_mark_down, database_usable
from proxy import metrics, tracing
from proxy.admission import admit, limit_headers, price_usage, settle_start
from proxy.auth import authenticate, key_touch_if_due
from proxy.calls import call_chat
from proxy.context import RequestContext
from proxy.embeddings import call_embeddings, gemini_embeddings_call, gemini_requests
from proxy.errors import Caller, GatewayError, error_response
from proxy.formats import CALLER_FORMATS, Inbound, stream_error_event
from proxy.parsing import (
    read_json_object,
    validate_anthropic_messages,
    validate_gemini_generate,
    validate_openai_chat,
    validate_openai_embeddings,
    validate_openai_responses,
)
from proxy.probing import authenticate_watched, resolve_route_watched
from proxy.recording import capture_bodies, record
from proxy.routing import RouteInfo
from proxy.stored_responses import responses_state

logger = logging.getLogger("tollgate.requests")

# Where the server's entry point (gateway_site/asgi.py) leaves the key it accepted before reading the
# body (request.META), so that the view does not look it up a second time.
KEY_ACCEPTED = "tollgate.key_accepted"

DATABASE_UNAVAILABLE_MESSAGE = (
    "The gateway cannot reach its database, so it cannot record requests and refuses them. Retry shortly."
)


async def key_of(request: HttpRequest, address: str | None) -> KeyInfo:
    """The caller's key: the one the entry point accepted, else authenticate_watched's (401 or 403)."""
    accepted = request.META.get(KEY_ACCEPTED)
    if accepted is not None:
        return accepted
    return await authenticate_watched(request, address)


def client_ip(request: HttpRequest) -> str | None:
    """The peer, or X-Forwarded-For's client when the peer is in TOLLGATE_TRUSTED_PROXIES."""
    return client_address(request.META)


# Per event loop (one per worker in production; tests make many).
_redis_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def redis_turn() -> asyncio.Semaphore:
    """Admissions and settlements in flight at once on this worker: at most three quarters of its Redis
    connections (TOLLGATE_REDIS_MAX_CONNECTIONS); the other requests wait their turn here, for as long
    as their client waits.

    Admission and settlement wait at most 5 s for one of the pool's connections (budgets.counters), and
    then fail as if Redis were down: a 503 `limits_unavailable`, a settlement charged to the database
    copy only. A burst of thousands of requests on one worker (the benchmark's 5,000 streams opened at
    once) waited that long for the pool while Redis was fine, and most of them were refused
    (docs/performance.md). Queued here instead, they are admitted late rather than refused. A Redis
    that does not answer still fails each of them within its socket timeouts."""
    loop = asyncio.get_running_loop()
    turn = _redis_turns.get(loop)
    if turn is None:
        turn = _redis_turns[loop] = asyncio.Semaphore(max(1, settings.TOLLGATE_REDIS_MAX_CONNECTIONS * 3 // 4))
    return turn


async def _settle_in_turn(ctx: RequestContext) -> None:
    async with redis_turn():
        await settle_start(ctx)


async def request_finish(ctx: RequestContext) -> None:
    """Finish the request: price its usage, settle its budget and record its audit event (durably),
    then metrics and the log line. Once per request; a second call does nothing."""
    if ctx.finished:
        return
    ctx.finished = True
    ctx.lap("answer")  # the call's own end: relaying (streams) or building the response
    await price_usage(ctx)
    # The budget's settlement (Redis) and the audit event's commit (PostgreSQL) need nothing from
    # each other: they go on at the same time, and the answer waits for both.
    # A task of its own (a client that leaves cancels the request, never its settlement), in its turn.
    settling = asyncio.get_running_loop().create_task(_settle_in_turn(ctx))
    try:
        audit_started = time.perf_counter()
        await record(ctx)
        audit_seconds = ctx.stages["audit"] = time.perf_counter() - audit_started
    finally:
        await asyncio.shield(settling)
        ctx.lap("finish")
    tracing.interval(ctx, "audit", audit_started, audit_started + audit_seconds)
    await key_touch_if_due(ctx.key)
    metrics.request_observe(ctx, audit_seconds=audit_seconds)
    # Structured fields (gateway_site/lib/logs.py): never a key or a body.
    logger.info("request finished", extra={
        "request_id": ctx.request_id,
        "consumer": ctx.key.consumer_name if ctx.key else None,
        "route": ctx.route.model if ctx.route else None,
        "provider": ctx.deployment.provider.name if ctx.deployment else None,
        "endpoint": ctx.endpoint,
        "status": ctx.status,
        "error_class": ctx.error_class,
        "attempts": ctx.attempts,
        "stream": ctx.stream,
        "prompt_tokens": ctx.prompt_tokens,
        "completion_tokens": ctx.completion_tokens,
        "latency_ms": round(ctx.elapsed() * 1000, 1),
        "overhead_ms": round(ctx.overhead_ms(), 2),
        "ttft_ms": None if ctx.first_byte_seconds is None else round(ctx.first_byte_seconds * 1000, 1),
    })
    tracing.export(ctx)


def _stamp(response: HttpResponse, ctx: RequestContext) -> HttpResponse:
    response["x-request-id"] = ctx.request_id
    if ctx.key is None:
        # No valid key (401, a probing 429, a refusal before authentication): the x-tollgate-*
        # headers would tell an anonymous scanner which product answers (docs/reliability.md, Probing).
        return response
    response["x-tollgate-overhead-ms"] = f"{ctx.overhead_ms():.2f}"
    if ctx.deployment is not None:
        response["x-tollgate-provider"] = ctx.deployment.provider.name
    if ctx.attempts:
        response["x-tollgate-attempts"] = str(ctx.attempts)
    for name, value in limit_headers(ctx).items():
        response[name] = value
    if settings.TOLLGATE_STAGE_TIMING:
        # Milliseconds per stage, for the benchmark's profile (docs/performance.md).
        response["x-tollgate-stages"] = ";".join(f"{k}={v * 1000:.3f}" for k, v in ctx.stages.items())
    return response


def _start(request: HttpRequest, caller: Caller, endpoint: str) -> RequestContext:
    ctx = tracing.context(caller=caller, endpoint=endpoint)
    ctx.client_ip = client_ip(request)
    ctx.user_agent = request.headers.get("User-Agent", "")[:300]
    return ctx


def _database_lost(ctx: RequestContext, outcome: str) -> GatewayError:
    """The database failed this request: log it, refuse requests up front until it is back
    (gateway_site.lib.db), and the 503 for the caller."""
    logger.error("request %s: the database is unreachable; %s", ctx.request_id, outcome)
    database_mark_down()
    return GatewayError("unavailable", DATABASE_UNAVAILABLE_MESSAGE, code="database_unavailable",
                        headers={"retry-after": "1"})


async def _finish_before(ctx: RequestContext, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Relay a stream, counted in tollgate_open_streams while it is sent, and finish the request
    before its last event is released (the relay marks it: ctx.ending), so the audit event is
    durable before the client sees the end (DESIGN §4). If the gateway fails inside the stream,
    it ends with an error event in the caller's format instead of a dropped connection (the
    headers, and a 200, are already sent)."""
    gauge = metrics.open_stream(ctx)
    try:
        async for chunk in chunks:
            if ctx.ending and not ctx.finished:
                await request_finish(ctx)
            yield chunk
        await request_finish(ctx)  # the provider's stream ended without a last event of its own
    except DatabaseError:
        yield _database_lost_event(ctx)
    except asyncio.CancelledError:
        # The client went away: the view is cancelled, and the relay closes the upstream response.
        ctx.error_class = "client_disconnected"
        raise
    except Exception:
        logger.exception("request %s failed inside the gateway while streaming", ctx.request_id)
        ctx.stream_ends("internal_error")
        try:
            await request_finish(ctx)
        except DatabaseError:
            yield _database_lost_event(ctx)
        else:
            yield stream_error_event(ctx.caller, "The gateway failed to handle this request.", "internal_error", 500)
    finally:
        gauge.dec()
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
        if not ctx.finished:  # the client went away, or stopped reading: nobody left to tell
            try:
                await request_finish(ctx)
            except DatabaseError:
                _database_lost(ctx, "stream cut short")


async def _left_early(ctx: RequestContext) -> None:
    """Finish a request whose client went away before its answer (status 499, as nginx logs it)."""
    ctx.outcome(499, "client_disconnected")
    ctx.upstream_started = ctx.upstream_started or ctx.attempts > 0
    try:
        await asyncio.shield(request_finish(ctx))
    except (asyncio.CancelledError, DatabaseError):
        logger.warning("request %s: the client left, and finishing it did not complete", ctx.request_id)


def _database_lost_event(ctx: RequestContext) -> bytes:
    error = _database_lost(ctx, "stream ended without its end")
    return stream_error_event(ctx.caller, error.message, error.code or error.kind, error.status)


async def _refuse(ctx: RequestContext, error: GatewayError) -> HttpResponse:
    # A valid key refused for where it is used from (proxy.auth.KeyNotAllowed): the audit row
    # names its consumer and key, so the owner sees who tried.
    ctx.key = ctx.key or getattr(error, "key", None)
    ctx.outcome(error.status, error.code or error.kind)
    try:
        await request_finish(ctx)
    except DatabaseError:
        error = _database_lost(ctx, "refused")
    return _stamp(error_response(error, ctx.caller), ctx)


async def proxy_openai_chat(request: HttpRequest) -> HttpResponse:
    return await _proxy_chat(request, Caller.OPENAI, "chat.completions", "/v1/chat/completions",
                             validate_openai_chat)


async def proxy_anthropic_messages(request: HttpRequest) -> HttpResponse:
    return await _proxy_chat(request, Caller.ANTHROPIC, "messages", "/v1/messages", validate_anthropic_messages)


async def proxy_openai_responses(request: HttpRequest) -> HttpResponse:
    return await _proxy_chat(request, Caller.RESPONSES, "responses", "/v1/responses", validate_openai_responses)


async def proxy_gemini_generate(request: HttpRequest, model: str, *, stream: bool) -> HttpResponse:
    """Gemini's generateContent / streamGenerateContent: the route is named in the URL, not the body."""
    method = "streamGenerateContent" if stream else "generateContent"
    return await _proxy_chat(request, Caller.GEMINI, f"gemini.{method}", f"/v1beta/models/{{model}}:{method}",
                             validate_gemini_generate, url_model=model, stream=stream,
                             sse=request.GET.get("alt") == "sse")


async def proxy_openai_embeddings(request: HttpRequest) -> HttpResponse:
    # Nothing is generated: budgets reserve the input's estimate alone (proxy.bounds: embeddings).
    return await _proxy_chat(request, Caller.OPENAI, "embeddings", "/v1/embeddings", validate_openai_embeddings,
                             stream=False, call=call_embeddings)


async def proxy_gemini_embed(request: HttpRequest, model: str, method: str) -> HttpResponse:
    """Gemini's embedContent / batchEmbedContents (the route named in the URL)."""
    return await _proxy_chat(request, Caller.GEMINI, f"gemini.{method}", f"/v1beta/models/{{model}}:{method}",
                             lambda body: gemini_requests(body, method), url_model=model, stream=False,
                             call=gemini_embeddings_call(method))


Call = Callable[[RequestContext, RouteInfo, Inbound], Awaitable[HttpResponse]]


async def _proxy_chat(request: HttpRequest, caller: Caller, endpoint: str, path: str,
                      validate: Callable[[dict[str, Any]], object], *, url_model: str | None = None,
                      stream: bool | None = None, sse: bool = True, call: Call = call_chat) -> HttpResponse:
    """`url_model` and `stream`: what the URL says, for formats whose body does not (Gemini);
    `call` serves the request (chat: call_chat). What budgets reserve for the answer follows
    from the endpoint and the body (proxy.bounds)."""
    ctx = _start(request, caller, endpoint)
    ctx.requested_model = url_model
    try:
        if not await database_usable():
            # No audit row could be written: refuse before anything is spent (DESIGN §4).
            raise DatabaseError("the database is known to be down")
        # Before the method check: without a key, a wrong method is the same 401 as any path.
        ctx.key = await key_of(request, ctx.client_ip)
        if request.method != "POST":
            raise GatewayError("method_not_allowed", f"Use POST for {path}.")
        ctx.lap("auth")
        # After the key: without one, every path and method gets the same 401 (nothing to learn by probing).
        if request.method != "POST":
            raise GatewayError("method_not_allowed", f"Use POST for {path}.")
        body = read_json_object(request)
        await capture_bodies(ctx, body)
        validate(body)
        ctx.lap("parse")
        ctx.route = await resolve_route_watched(ctx.key, body["model"] if url_model is None else url_model,
                                                ctx.client_ip)
        ctx.stream = bool(body.get("stream")) if stream is None else stream
        ctx.pinned_provider = request.headers.get("X-Provider") or None
        inbound = Inbound(CALLER_FORMATS[caller], body, {k.lower(): v for k, v in request.headers.items()},
                          sse=sse)
        if caller is Caller.RESPONSES:
            inbound.stored, ctx.pinned_deployment = await responses_state(ctx.route, body)
        ctx.lap("route")
        async with redis_turn():
            await admit(ctx, body)
        ctx.lap("admit")
        response = await call(ctx, ctx.route, inbound)
        # Provider time and the gateway's own time (translation, failover) of the call.
        ctx.stages["upstream"] = ctx.upstream_seconds
        ctx.lap("call")
        ctx.stages["call"] -= ctx.upstream_seconds
    except GatewayError as error:
        return await _refuse(ctx, error)
    except DatabaseError:
        return await _refuse(ctx, _database_lost(ctx, "refused"))
    except asyncio.CancelledError:
        # The client left while the provider was answering: the upstream call is cancelled with this
        # task, and what the provider billed until then is charged and recorded (issue #16).
        await _left_early(ctx)
        raise
    except Exception:
        logger.exception("request %s failed inside the gateway", ctx.request_id)
        return await _refuse(ctx, GatewayError("internal", "The gateway failed to handle this request.",
                                               code="internal_error"))
    if isinstance(response, StreamingHttpResponse):
        response.streaming_content = _finish_before(ctx, response.streaming_content)
        return _stamp(response, ctx)
    return await _answer(ctx, response)


async def _answer(ctx: RequestContext, response: HttpResponse) -> HttpResponse:
    """Finish a request whose whole answer is ready (its outcome marked on ctx), then release it."""
    try:
        await request_finish(ctx)
    except DatabaseError:
        # No audit event, so no answer (DESIGN §4): the caller gets a 503 instead.
        return _stamp(error_response(_database_lost(ctx, "answer withheld"), ctx.caller), ctx)
    return _stamp(response, ctx)


# --- Proxy views outside the chat path ----------------------------------------------------


View = Callable[..., Coroutine[Any, Any, HttpResponse]]


def caller_of(request: HttpRequest) -> Caller:
    """The caller's format on a path several formats share (/v1/models, unknown paths)."""
    # Google's SDKs send their key as x-goog-api-key (or ?key=), and use /v1beta by default.
    if request.path.startswith("/v1beta/") or "x-goog-api-key" in request.headers or "key" in request.GET:
        return Caller.GEMINI
    # Anthropic's SDK always sends anthropic-version; OpenAI's never does.
    return Caller.ANTHROPIC if "anthropic-version" in request.headers else Caller.OPENAI


def _error_class_of(response: HttpResponse) -> str | None:
    """The code (or type) of an error answer in either caller's shape."""
    if response.status_code < 400 or getattr(response, "streaming", False):
        return None
    try:
        error = orjson.loads(response.content).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(error, dict):
        return None
    return str(error.get("code") or error.get("type") or "") or None


def finished_as(endpoint: str, caller: Caller | None = None) -> Callable[[View], View]:
    """Finish a proxy view that answers by itself (model list, token counting, unknown paths) through
    request_finish, as `endpoint`: one audit event, metrics, the log line and the gateway's headers.
    `caller` is the view's format (None: caller_of(request)), for the 503 when nothing can be recorded.

    The view needs no change: the key is looked up again after the answer (a per-worker cache hit).
    """
    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            ctx = _start(request, caller or caller_of(request), endpoint)
            model = kwargs.get("model")
            if isinstance(model, str):
                ctx.requested_model = model
            try:
                response = await view(request, *args, **kwargs)
            except Exception:
                ctx.outcome(500, "internal_error")
                await request_finish(ctx)
                raise
            try:
                ctx.key = request.META.get(KEY_ACCEPTED) or await authenticate(request)
            except GatewayError:
                pass
            ctx.outcome(response.status_code, _error_class_of(response))
            return await _answer(ctx, response)

        return wrapper

    return decorate
