"""Steps 5 to 7 of the request path: call a deployment, fail over, relay the answer."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import orjson
from django.http import HttpResponse, StreamingHttpResponse

from proxy.context import RequestContext
from proxy.errors import GatewayError
from proxy.providers.base import ProviderAdapter, ProviderError
from proxy.providers.registry import adapter_for
from proxy.routing import RouteInfo, deployment_order
from proxy.upstream import get_client

logger = logging.getLogger(__name__)

Finish = Callable[[RequestContext], Awaitable[None]]


def _transport_error(adapter: ProviderAdapter, exc: Exception) -> ProviderError:
    name = adapter.provider.name
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(
            f"Provider '{name}' did not answer in time ({exc.__class__.__name__}).",
            error_class="timeout",
            retryable=True,
        )
    return ProviderError(
        f"Provider '{name}' could not be reached ({exc.__class__.__name__}).",
        error_class="connect_error",
        retryable=True,
    )


def _final_error_response(error: ProviderError) -> HttpResponse:
    """What the client sees when no deployment could answer."""
    if error.status is not None and error.body is not None:
        # Same wire format on both sides: the upstream's own status and error body.
        response = HttpResponse(error.body, status=error.status,
                                content_type=error.content_type or "application/json")
        if error.retry_after is not None:
            response["retry-after"] = str(int(error.retry_after))
        return response
    kind = "timeout" if error.error_class == "timeout" else "upstream"
    raise GatewayError(kind, error.message, code=error.error_class)


async def call_openai_chat(
    ctx: RequestContext, route: RouteInfo, body: dict[str, Any], finish: Finish,
    client_headers: dict[str, str],
) -> HttpResponse:
    """Serve an OpenAI-format request from the route's deployments, in failover order."""
    order = deployment_order(route)
    if not order:
        raise GatewayError("unavailable", f"The model '{route.model}' has no enabled deployment right now.",
                           code="no_deployment")
    last_error: ProviderError | None = None
    for deployment in order:
        ctx.attempts += 1
        ctx.deployment = deployment
        adapter = adapter_for(deployment.provider)
        try:
            if ctx.stream:
                return await _stream(ctx, adapter, deployment.upstream_model, body, finish, client_headers)
            return await _complete(ctx, adapter, deployment.upstream_model, body, client_headers)
        except ProviderError as error:
            last_error = error
            ctx.error_class = error.error_class
            logger.info("request %s: attempt %d on %s failed: %s", ctx.request_id, ctx.attempts,
                        deployment.provider.name, error.error_class)
            if not error.retryable:
                break
    assert last_error is not None
    ctx.status = last_error.status or (504 if last_error.error_class == "timeout" else 502)
    return _final_error_response(last_error)


async def _complete(
    ctx: RequestContext, adapter: ProviderAdapter, upstream_model: str, body: dict[str, Any],
    client_headers: dict[str, str],
) -> HttpResponse:
    payload = {**body, "model": upstream_model}
    payload.pop("stream", None)
    payload.pop("stream_options", None)
    started = time.perf_counter()
    try:
        response = await get_client().post(
            adapter.chat_url(upstream_model=upstream_model, stream=False),
            content=orjson.dumps(payload),
            headers=adapter.request_headers(client_headers),
            timeout=adapter.timeout(),
        )
    except httpx.HTTPError as exc:
        raise _transport_error(adapter, exc) from None
    finally:
        ctx.upstream_seconds += time.perf_counter() - started
    content = response.content
    if response.status_code >= 400:
        raise adapter.error_from_response(response, content)
    try:
        ctx.record_usage(orjson.loads(content).get("usage"))
    except (orjson.JSONDecodeError, AttributeError):
        pass
    ctx.status = response.status_code
    ctx.error_class = None
    ctx.capture_response(content)
    return HttpResponse(content, status=response.status_code,
                        content_type=response.headers.get("content-type", "application/json"))


def _split_events(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Complete SSE events (each ending with a blank line) and the unfinished rest."""
    if b"\r" in buffer:
        buffer = buffer.replace(b"\r\n", b"\n")
    parts = buffer.split(b"\n\n")
    rest = parts.pop()
    return [part + b"\n\n" for part in parts if part], rest


def _usage_chunk(event: bytes) -> tuple[dict | None, bool]:
    """(usage, is_usage_only_chunk) of one SSE event; cheap unless the event mentions usage."""
    if b'"usage"' not in event:
        return None, False
    data = event.strip()
    if not data.startswith(b"data:"):
        return None, False
    try:
        chunk = orjson.loads(data[5:])
    except orjson.JSONDecodeError:
        return None, False
    if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
        return None, False
    return chunk["usage"], chunk.get("choices") == []


def openai_stream_error_event(message: str, error_class: str) -> bytes:
    payload = {"error": {"message": message, "type": "upstream_error", "param": None, "code": error_class}}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _stream(
    ctx: RequestContext, adapter: ProviderAdapter, upstream_model: str, body: dict[str, Any],
    finish: Finish, client_headers: dict[str, str],
) -> HttpResponse:
    client_options = body.get("stream_options") or {}
    client_wants_usage = bool(client_options.get("include_usage"))
    # Always ask for usage, so streamed requests are metered exactly; the extra
    # chunk is removed again below when the client did not ask for it.
    payload = {**body, "model": upstream_model, "stream": True,
               "stream_options": {**client_options, "include_usage": True}}
    client = get_client()
    request = client.build_request(
        "POST",
        adapter.chat_url(upstream_model=upstream_model, stream=True),
        content=orjson.dumps(payload),
        headers={**adapter.request_headers(client_headers), "accept": "text/event-stream"},
        timeout=adapter.timeout(),
    )
    started = time.perf_counter()
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        ctx.upstream_seconds += time.perf_counter() - started
        raise _transport_error(adapter, exc) from None
    ctx.upstream_seconds += time.perf_counter() - started
    if response.status_code >= 400:
        try:
            content = await response.aread()
        except httpx.HTTPError:
            content = b""
        finally:
            await response.aclose()
        raise adapter.error_from_response(response, content)
    ctx.status = response.status_code
    ctx.error_class = None

    async def relay() -> AsyncIterator[bytes]:
        pending = b""
        try:
            async for raw in response.aiter_bytes():
                if ctx.first_byte_seconds is None:
                    ctx.first_byte_seconds = ctx.elapsed()
                events, pending = _split_events(pending + raw)
                out = []
                for event in events:
                    usage, usage_only = _usage_chunk(event)
                    if usage is not None:
                        ctx.record_usage(usage)
                        if usage_only and not client_wants_usage:
                            continue
                    out.append(event)
                if out:
                    data = b"".join(out)
                    ctx.capture_response(data)
                    yield data
            if pending.strip():
                yield pending
        except httpx.HTTPError as exc:
            # Bytes already reached the client: no failover now, end the stream
            # with an error event in the caller's format.
            error = _transport_error(adapter, exc)
            ctx.error_class = "stream_interrupted"
            yield openai_stream_error_event(
                f"The provider's stream ended early: {error.message}", "stream_interrupted"
            )
        except asyncio.CancelledError:
            # The client went away: closing the upstream response below cancels
            # the provider's work too.
            ctx.error_class = "client_disconnected"
            raise
        finally:
            await response.aclose()
            await finish(ctx)

    return StreamingHttpResponse(
        relay(),
        status=response.status_code,
        content_type="text/event-stream; charset=utf-8",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )
