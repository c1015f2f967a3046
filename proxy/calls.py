"""Steps 5 to 7 of the request path: choose a deployment, call it, fail over, relay the answer.

A caller's request goes to a provider of the same wire format as bytes (only
`model` is replaced, and the stream is scanned for usage); to a provider of
another format it goes through the internal representation (proxy.providers.ir),
non-stream and stream, one event in and one event out.

Nothing here settles a budget or records an audit event: the call marks how the
request ends on its context (status, error class, usage), and a stream marks its
last event before it yields it, so that proxy.pipeline finishes the request before
that event reaches the client (DESIGN §4).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import orjson
from django.http import HttpResponse, StreamingHttpResponse

from proxy import breaker
from proxy.admission import model_not_priced
from proxy.bounds import ANTHROPIC_TEXT_KEYS, OPENAI_TEXT_KEYS, bound_apply, output_bound, relayed_text_bytes, wire_of
from proxy.context import RequestContext
from proxy.errors import Caller, GatewayError
from proxy.formats import CALLER_FORMATS, CallerFormat
from proxy.pricefields import price_fields_strip
from proxy.providers import anthropic as anthropic_format
from proxy.providers import openai as openai_format
from proxy.providers.base import ProviderAdapter, ProviderError
from proxy.providers.ir import (
    ChatRequest,
    ReasoningDelta,
    StreamError,
    StreamEvent,
    StreamStart,
    StreamUsage,
    TextDelta,
    ToolCallDelta,
    TranslationError,
)
from proxy.providers.registry import adapter_for
from proxy.providers.sse import SSEParser
from proxy.routing import DeploymentInfo, RouteInfo, deployment_order
from proxy.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout
from proxy.upstream import post as upstream_post
from proxy.upstream import send as upstream_send

logger = logging.getLogger(__name__)

_STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def _transport_error(adapter: ProviderAdapter, exc: UpstreamError) -> ProviderError:
    name = adapter.provider.name
    if isinstance(exc, UpstreamTimeout):
        return ProviderError(
            f"Provider '{name}' did not answer in time ({exc.kind}).",
            error_class="timeout",
            retryable=True,
        )
    return ProviderError(
        f"Provider '{name}' could not be reached ({exc.kind}).",
        error_class="connect_error",
        retryable=True,
    )


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
    usable = [d for d in route.deployments if states[d.id] != "open"]
    half_open = {i for i, s in states.items() if s == "half_open"}
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


async def call_chat(
    ctx: RequestContext, route: RouteInfo, body: dict[str, Any], client_headers: dict[str, str],
) -> HttpResponse:
    """Serve a chat request, in the caller's format, from the route's deployments in failover order;
    the answer's status and error class are marked on ctx (the pipeline finishes the request)."""
    caller = CALLER_FORMATS[ctx.caller]
    order, half_open = await plan_attempts(ctx, route)
    _bound(ctx, route, body)
    ir: ChatRequest | None = None
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
        trial = deployment.id in half_open
        if trial and not await breaker.acquire_trial(deployment.id):
            continue
        adapter = adapter_for(deployment.provider)
        same_format = adapter.wire_format == caller.wire
        if not same_format and ir is None:
            try:
                ir = caller.decode_request(body)
            except TranslationError as error:
                untranslatable = error
                continue
        if first_started is None:
            first_started = time.monotonic()
        if ctx.attempts:
            ctx.failovers += 1
        ctx.attempts += 1
        ctx.deployment = deployment
        try:
            if same_format:
                response = await _passthrough(ctx, caller, adapter, deployment, route, body, client_headers)
            else:
                assert ir is not None
                response = await _translated(ctx, caller, adapter, deployment, route, ir)
        except TranslationError as error:
            ctx.attempts -= 1
            untranslatable = error
            continue
        except ProviderError as error:
            last_error, last_same_format = error, same_format
            fails_over = _fails_over(error, route)
            logger.info("request %s: attempt %d on %s failed: %s", ctx.request_id, ctx.attempts,
                        deployment.provider.name, error.error_class)
            if fails_over:
                await breaker.record_failure(deployment.id, error.message, retry_after=error.retry_after,
                                            trial=trial)
                continue
            break
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
    """What the client sees when no deployment could answer."""
    if error.status is None or error.body is None:
        kind = "timeout" if error.error_class == "timeout" else "upstream"
        raise GatewayError(kind, error.message, code=error.error_class)
    if same_format:
        # Same wire format on both sides: the upstream's own status and error body.
        response = HttpResponse(error.body, status=error.status,
                                content_type=error.content_type or "application/json")
    else:
        # The provider's credential being refused is the gateway's problem, not the caller's key.
        status = 502 if error.status in (401, 403) else error.status
        response = HttpResponse(orjson.dumps(caller.error_body(status, error.message, error.error_class)),
                                status=status, content_type="application/json")
    if error.retry_after is not None:
        response["retry-after"] = str(math.ceil(error.retry_after))
    return response


# --- One attempt: sending -----------------------------------------------------------------


async def _post(ctx: RequestContext, adapter: ProviderAdapter, url: str, payload: dict[str, Any],
                headers: dict[str, str]) -> tuple[UpstreamResponse, bytes]:
    started = time.perf_counter()
    try:
        response, content = await upstream_post(url, content=orjson.dumps(payload), headers=headers,
                                                timeouts=adapter.timeout())
    except UpstreamError as exc:
        if isinstance(exc, UpstreamTimeout) and exc.kind != "ConnectionTimeoutError":
            ctx.upstream_started = True  # sent, and maybe generating (and billing) when we gave up
        raise _transport_error(adapter, exc) from None
    finally:
        ctx.upstream_seconds += time.perf_counter() - started
    if response.status_code >= 400:
        raise adapter.error_from_response(response, content)
    ctx.upstream_started = True
    return response, content


async def _open_stream(ctx: RequestContext, adapter: ProviderAdapter, url: str, payload: dict[str, Any],
                       headers: dict[str, str]) -> tuple[UpstreamResponse, AsyncIterator[bytes], bytes]:
    """Send the request and wait for the first bytes of the answer: until then, failover is still possible."""
    started = time.perf_counter()
    try:
        response = await upstream_send(url, content=orjson.dumps(payload),
                                       headers={**headers, "accept": "text/event-stream"},
                                       timeouts=adapter.timeout())
    except UpstreamError as exc:
        ctx.upstream_seconds += time.perf_counter() - started
        raise _transport_error(adapter, exc) from None
    if response.status_code >= 400:
        try:
            content = await response.read()
        except UpstreamError:
            content = b""
        finally:
            await response.aclose()
            ctx.upstream_seconds += time.perf_counter() - started
        raise adapter.error_from_response(response, content)
    ctx.upstream_started = True  # from here the provider bills, whether or not its usage reaches us
    chunks = response.chunks()
    try:
        first = await chunks.__anext__()
    except (UpstreamError, StopAsyncIteration) as exc:
        await response.aclose()
        name = adapter.provider.name
        kind = exc.kind if isinstance(exc, UpstreamError) else exc.__class__.__name__
        raise ProviderError(f"Provider '{name}' ended its stream before sending anything ({kind}).",
                            error_class="timeout" if isinstance(exc, UpstreamTimeout) else "stream_interrupted",
                            retryable=True) from None
    finally:
        ctx.upstream_seconds += time.perf_counter() - started
    return response, chunks, first


# --- Same format: bytes through -----------------------------------------------------------


async def _passthrough(
    ctx: RequestContext, caller: CallerFormat, adapter: ProviderAdapter, deployment: DeploymentInfo,
    route: RouteInfo, body: dict[str, Any], client_headers: dict[str, str],
) -> HttpResponse:
    payload = {**body, "model": deployment.upstream_model}
    # The output bound admission reserved goes upstream, whatever the client sent (proxy.bounds).
    bound_apply(caller.wire, payload, ctx.max_output_tokens or route.default_max_tokens,
                openai_field=getattr(adapter, "max_tokens_field", "max_tokens"))
    if not route.allow_price_fields:
        client_headers = dict(client_headers)
        price_fields_strip(caller.wire, payload, client_headers, request_id=ctx.request_id)
    url = adapter.chat_url(upstream_model=deployment.upstream_model, stream=ctx.stream)
    headers = adapter.request_headers(client_headers)
    if not ctx.stream:
        payload.pop("stream", None)
        payload.pop("stream_options", None)
        response, content = await _post(ctx, adapter, url, payload, headers)
        _usage_of_answer(ctx, caller, content)
        ctx.relayed_bytes = len(content)
        ctx.capture_response(content)
        return HttpResponse(content, status=response.status_code,
                            content_type=response.headers.get("content-type", "application/json"))
    client_wants_usage = True
    if caller.caller is Caller.OPENAI:
        client_options = body.get("stream_options") or {}
        client_wants_usage = bool(client_options.get("include_usage"))
        # Always ask for usage, so streamed requests are metered exactly; the extra
        # chunk is removed again below when the client did not ask for it.
        payload["stream"] = True
        payload["stream_options"] = {**client_options, "include_usage": True}
    response, chunks, first = await _open_stream(ctx, adapter, url, payload, headers)
    keep = (_openai_event_filter(ctx, client_wants_usage) if caller.caller is Caller.OPENAI
            else _anthropic_event_filter(ctx))
    relay = _relay_same_format(ctx, caller, adapter, deployment, response, chunks, first, keep)
    return StreamingHttpResponse(
        relay,
        status=response.status_code, content_type=_SSE_CONTENT_TYPE, headers=_STREAM_HEADERS,
    )


def _bound(ctx: RequestContext, route: RouteInfo, body: dict[str, Any]) -> int:
    """The output bound admission worked out (worked out here when admission did not run)."""
    if ctx.max_output_tokens is None:
        ctx.max_output_tokens = output_bound(wire_of(ctx.caller.value, ctx.endpoint), body, route).tokens
    return ctx.max_output_tokens


def _usage_of_answer(ctx: RequestContext, caller: CallerFormat, content: bytes) -> None:
    try:
        usage = orjson.loads(content).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return
    if caller.caller is Caller.OPENAI:
        ctx.record_usage_detail(openai_format.usage_from_openai(usage))
    elif isinstance(usage, dict):
        ctx.record_usage_detail(anthropic_format.usage_from_anthropic(usage))


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


async def _stream_broke(ctx: RequestContext, deployment: DeploymentInfo, adapter: ProviderAdapter,
                        exc: UpstreamError) -> str:
    # Bytes already reached the client: no failover now. The stream ends with an
    # error event in the caller's format, and the deployment's breaker hears of it.
    error = _transport_error(adapter, exc)
    await breaker.record_failure(deployment.id, f"stream interrupted: {error.message}")
    ctx.stream_ends("stream_interrupted")
    return f"The provider's stream ended early: {error.message}"


def _openai_event_filter(ctx: RequestContext, client_wants_usage: bool) -> Callable[[bytes], bool]:
    """Meter OpenAI chunks; drop the usage-only chunk the client did not ask for."""
    def keep(event: bytes) -> bool:
        ctx.relayed_bytes += relayed_text_bytes(event, OPENAI_TEXT_KEYS)
        usage, usage_only = _usage_chunk(event)
        if usage is not None:
            ctx.record_usage_detail(openai_format.usage_from_openai(usage))
            if usage_only and not client_wants_usage:
                return False
        return True
    return keep


def _anthropic_event_filter(ctx: RequestContext) -> Callable[[bytes], bool]:
    """Meter Anthropic events (message_start and message_delta carry usage); keep them all."""
    def keep(event: bytes) -> bool:
        ctx.relayed_bytes += relayed_text_bytes(event, ANTHROPIC_TEXT_KEYS)
        found = anthropic_format.stream_usage_of(event)
        if found is not None:
            ctx.record_usage_detail(found[0], output=found[1])
        elif event.startswith(b"event: error"):
            # The provider's own error event ends its stream: it is the last event the client gets.
            ctx.stream_ends("upstream_stream_error")
        return True
    return keep


async def _relay_same_format(
    ctx: RequestContext, caller: CallerFormat, adapter: ProviderAdapter, deployment: DeploymentInfo,
    response: UpstreamResponse, chunks: AsyncIterator[bytes], first: bytes, keep: Callable[[bytes], bool],
) -> AsyncIterator[bytes]:
    """Relay the provider's SSE bytes as they come, event by event, metering on the way.

    The stream's last event ([DONE] or message_stop) goes out on its own, marked
    on ctx, so the pipeline can finish the request before releasing it (DESIGN §4).
    """
    terminal = caller.stream_terminal
    pending = b""
    raw = first
    try:
        while True:
            if ctx.first_byte_seconds is None:
                ctx.first_byte_seconds = ctx.elapsed()
            events, pending = _split_events(pending + raw)
            out = []
            for event in events:
                if event.startswith(terminal):
                    if out:
                        data = b"".join(out)
                        ctx.capture_response(data)
                        yield data
                        out = []
                    ctx.capture_response(event)
                    ctx.stream_ends()
                    yield event
                elif keep(event):
                    out.append(event)
            if out:
                data = b"".join(out)
                ctx.capture_response(data)
                yield data
            try:
                raw = await chunks.__anext__()
            except StopAsyncIteration:
                break
        if pending.strip():
            yield pending
    except UpstreamError as exc:
        yield caller.stream_error(await _stream_broke(ctx, deployment, adapter, exc), "stream_interrupted", 502)
    finally:
        # Also when the client went away: closing the upstream response cancels the provider's work too.
        await response.aclose()


# --- Another format: through the internal representation ----------------------------------


def _account(ctx: RequestContext, event: StreamEvent) -> None:
    if isinstance(event, TextDelta | ReasoningDelta):
        ctx.relayed_bytes += len(event.text.encode())
    elif isinstance(event, ToolCallDelta):
        ctx.relayed_bytes += len(event.arguments.encode())
    elif isinstance(event, StreamStart) and event.input_tokens is not None:
        ctx.prompt_tokens = event.input_tokens
    elif isinstance(event, StreamUsage):
        ctx.record_usage_detail(event)


class _UpstreamStreamError(Exception):
    def __init__(self, event: StreamError) -> None:
        super().__init__(event.message)
        self.event = event


def _decode(decoder: Any, parsed: list[tuple[str | None, bytes]]) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    for name, data in parsed:
        try:
            events.extend(decoder.feed(name, data))
        except (orjson.JSONDecodeError, AttributeError, TypeError, KeyError):
            logger.warning("skipped an unreadable stream event: %r", data[:200])
    return events


async def _translated(
    ctx: RequestContext, caller: CallerFormat, adapter: ProviderAdapter, deployment: DeploymentInfo,
    route: RouteInfo, ir: ChatRequest,
) -> HttpResponse:
    ir.max_tokens = ctx.max_output_tokens  # the bound admission reserved, in the provider's own field
    payload = adapter.encode_request(ir, upstream_model=deployment.upstream_model,
                                     default_max_tokens=route.default_max_tokens, stream=ctx.stream)
    url = adapter.chat_url(upstream_model=deployment.upstream_model, stream=ctx.stream)
    headers = adapter.request_headers({})
    if not ctx.stream:
        response, content = await _post(ctx, adapter, url, payload, headers)
        try:
            data = orjson.loads(content)
            answer = adapter.decode_response(data)
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            raise ProviderError(f"Provider '{deployment.provider.name}' sent an answer that is not valid JSON "
                                f"({exc.__class__.__name__}).", error_class="upstream_invalid_answer",
                                retryable=False, status=502) from None
        answer.model = answer.model or deployment.upstream_model
        ctx.record_usage_detail(answer.usage)
        out = orjson.dumps(caller.encode_response(answer))
        ctx.relayed_bytes = len(out)
        ctx.capture_response(out)
        return HttpResponse(out, status=200, content_type="application/json")

    response, chunks, first = await _open_stream(ctx, adapter, url, payload, headers)
    parser, decoder = SSEParser(), adapter.stream_decoder()
    try:
        head = _decode(decoder, parser.feed(first))
    except Exception:
        await response.aclose()
        raise
    error = next((e for e in head if isinstance(e, StreamError)), None)
    if error is not None:
        # The provider refused inside its stream before anything reached the client: still time to fail over.
        # A refusal is not billed (only what it took and worked on is).
        ctx.upstream_started = False
        await response.aclose()
        status = error.status or 502
        raise ProviderError(f"Provider '{deployment.provider.name}' answered {status}: {error.message}",
                            error_class=f"upstream_{status}", retryable=True, status=status,
                            body=orjson.dumps(caller.error_body(status, error.message)))
    encoder = caller.stream_encoder(ir.include_usage)
    return StreamingHttpResponse(
        _relay_translated(ctx, caller, adapter, deployment, response, chunks, parser, decoder, encoder, head),
        status=200, content_type=_SSE_CONTENT_TYPE, headers=_STREAM_HEADERS,
    )


async def _relay_translated(
    ctx: RequestContext, caller: CallerFormat, adapter: ProviderAdapter, deployment: DeploymentInfo,
    response: UpstreamResponse, chunks: AsyncIterator[bytes], parser: SSEParser, decoder: Any, encoder: Any,
    head: list[StreamEvent],
) -> AsyncIterator[bytes]:
    """Relay another format's stream as the caller's, event by event; the last event is marked on ctx
    before it is yielded, so the pipeline can finish the request first (DESIGN §4)."""
    def encode(events: list[StreamEvent]) -> bytes:
        out = []
        for event in events:
            if isinstance(event, StreamError):
                raise _UpstreamStreamError(event)
            _account(ctx, event)
            out.append(encoder.encode(event))
        return b"".join(out)

    try:
        data = encode(head)
        if ctx.first_byte_seconds is None:
            ctx.first_byte_seconds = ctx.elapsed()
        if data:
            ctx.capture_response(data)
            yield data
        async for raw in chunks:
            data = encode(_decode(decoder, parser.feed(raw)))
            if data:
                ctx.capture_response(data)
                yield data
        data = encode(_decode(decoder, parser.close()) + decoder.close()) + encoder.tail()
        ctx.capture_response(data)
        yield data
        ctx.capture_response(encoder.terminal)
        ctx.stream_ends()
        yield encoder.terminal
    except UpstreamError as exc:
        yield caller.stream_error(await _stream_broke(ctx, deployment, adapter, exc), "stream_interrupted", 502)
    except _UpstreamStreamError as exc:
        await breaker.record_failure(deployment.id, f"error inside the stream: {exc.event.message}")
        ctx.stream_ends("upstream_stream_error")
        yield caller.stream_error(f"The provider reported an error: {exc.event.message}",
                                  "upstream_stream_error", 502)
    finally:
        await response.aclose()
