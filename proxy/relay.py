"""One attempt of step 5 to 7: send the request to one deployment and relay its answer.

A caller's request goes to a provider that speaks its wire format as bytes (only
`model` is replaced, and the stream is scanned for usage); to a provider of another
format it goes through the internal representation (proxy.providers.ir), non-stream
and stream, one event in and one event out. proxy.calls decides which deployment
is tried, and fails over.

Nothing here settles a budget or records an audit event: the attempt marks how the
request ends on its context (usage, and a stream's last event before it yields it),
so that proxy.pipeline finishes the request before that event reaches the client
(DESIGN §4).
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from django.http import HttpResponse, StreamingHttpResponse

from proxy import breaker, stored_responses
from proxy.bounds import (
    ANTHROPIC_TEXT_KEYS,
    GEMINI_TEXT_KEYS,
    OPENAI_TEXT_KEYS,
    RESPONSES_TEXT_KEYS,
    bound_apply,
    relayed_text_bytes,
)
from proxy.context import RequestContext
from proxy.errors import Caller
from proxy.formats import CallerFormat, Inbound, StreamSetup
from proxy.pricefields import price_fields_strip
from proxy.providers import anthropic as anthropic_format
from proxy.providers import gemini as gemini_format
from proxy.providers import openai as openai_format
from proxy.providers import responses as responses_format
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
)
from proxy.providers.responses.common import usage_from as responses_usage
from proxy.providers.sse import SSEParser
from proxy.routing import DeploymentInfo, RouteInfo
from proxy.upstream import UpstreamError, UpstreamResponse, UpstreamTimeout
from proxy.upstream import post as upstream_post
from proxy.upstream import send as upstream_send

logger = logging.getLogger(__name__)

STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class StreamResponse(StreamingHttpResponse):
    """A relayed stream, its parts handed to the server as the relay yields them (bytes): Django's wraps
    them in one more generator each time streaming_content is read (the pipeline once, the server once)."""

    @property
    def streaming_content(self) -> Any:
        return self._iterator  # type: ignore[attr-defined]

    @streaming_content.setter
    def streaming_content(self, value: Any) -> None:
        self._set_streaming_content(value)  # type: ignore[attr-defined]

    def __aiter__(self) -> Any:
        return self._iterator  # type: ignore[attr-defined]
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def transport_error(adapter: ProviderAdapter, exc: UpstreamError) -> ProviderError:
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


# --- Sending ------------------------------------------------------------------------------


async def post_json(ctx: RequestContext, adapter: ProviderAdapter, url: str, payload: dict[str, Any],
                    headers: dict[str, str]) -> tuple[UpstreamResponse, bytes]:
    """POST a JSON body and read the whole answer; an upstream error status raises ProviderError."""
    started = time.perf_counter()
    try:
        response, content = await upstream_post(url, content=orjson.dumps(payload), headers=headers,
                                                timeouts=adapter.timeout())
    except UpstreamError as exc:
        if isinstance(exc, UpstreamTimeout) and exc.kind != "ConnectionTimeoutError":
            ctx.upstream_started = True  # sent, and maybe generating (and billing) when we gave up
        raise transport_error(adapter, exc) from None
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
        raise transport_error(adapter, exc) from None
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


def _passthrough_payload(inbound: Inbound, deployment: DeploymentInfo, route: RouteInfo) -> dict[str, Any]:
    caller = inbound.format.caller
    body = inbound.body
    if caller is Caller.GEMINI:
        return dict(body)  # the model is in the URL
    payload = {**body, "model": deployment.upstream_model}
    if caller is Caller.RESPONSES:
        # Reasoning another provider signed (a cross-format turn earlier) would be refused by OpenAI.
        responses_format.strip_foreign_reasoning(payload)
        if "store" not in payload and not inbound.stored:
            # OpenAI keeps responses by default; the gateway's routes do not, unless they allow it.
            payload["store"] = False
    return payload


async def passthrough(ctx: RequestContext, inbound: Inbound, adapter: ProviderAdapter,
                      deployment: DeploymentInfo, route: RouteInfo) -> HttpResponse:
    caller = inbound.format
    payload = _passthrough_payload(inbound, deployment, route)
    # The output bound admission reserved goes upstream, whatever the client sent (proxy.bounds).
    if caller.wire != "embeddings":
        bound_apply(caller.wire, payload, ctx.max_output_tokens or route.default_max_tokens,
                    openai_field=getattr(adapter, "max_tokens_field", "max_tokens"))
    client_headers = inbound.headers
    if not route.allow_price_fields:
        client_headers = dict(client_headers)
        price_fields_strip(caller.wire, payload, client_headers, request_id=ctx.request_id)
    url = adapter.passthrough_url(caller.wire, upstream_model=deployment.upstream_model, stream=ctx.stream)
    headers = adapter.request_headers(client_headers)
    if not ctx.stream:
        if caller.caller in (Caller.OPENAI, Caller.ANTHROPIC):
            payload.pop("stream", None)
            payload.pop("stream_options", None)
        response, content = await post_json(ctx, adapter, url, payload, headers)
        answer_id = _usage_of_answer(ctx, caller.caller, content)
        ctx.relayed_bytes = len(content)
        if inbound.stored and answer_id:
            await stored_responses.remember(answer_id, deployment.id)
        ctx.capture_response(content)
        return HttpResponse(content, status=response.status_code,
                            content_type=response.headers.get("content-type", "application/json"))
    client_wants_usage = True
    if caller.caller is Caller.OPENAI:
        client_options = inbound.body.get("stream_options") or {}
        client_wants_usage = bool(client_options.get("include_usage"))
        # Always ask for usage, so streamed requests are metered exactly; the extra
        # chunk is removed again below when the client did not ask for it.
        payload["stream"] = True
        payload["stream_options"] = {**client_options, "include_usage": True}
    response, chunks, first = await _open_stream(ctx, adapter, url, payload, headers)
    seen: dict[str, str] = {}
    keep = _event_filter(ctx, caller.caller, client_wants_usage, seen)
    before_end = None
    if inbound.stored:
        async def before_end() -> None:
            if seen.get("id"):
                await stored_responses.remember(seen["id"], deployment.id)
    framer = _ArrayFramer() if caller.caller is Caller.GEMINI and not inbound.sse else None
    relay = _relay_same_format(ctx, caller, adapter, deployment, response, chunks, first, keep,
                               before_end=before_end, framer=framer)
    # The pipeline wraps and stamps both kinds alike; django-stubs has no common base with headers.
    return StreamResponse(  # type: ignore[return-value]
        relay, status=response.status_code, headers=STREAM_HEADERS,
        content_type="application/json" if framer is not None else SSE_CONTENT_TYPE,
    )


def _usage_of_answer(ctx: RequestContext, caller: Caller, content: bytes) -> str | None:
    """Meter a whole answer in the caller's (and provider's) format; the answer's id, for Responses."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    if caller is Caller.GEMINI:
        usage = gemini_format.usage_from_gemini(data.get("usageMetadata"))
        if usage is not None:
            ctx.record_usage_detail(usage)
        return None
    raw = data.get("usage")
    if caller is Caller.OPENAI:
        if isinstance(raw, dict):
            ctx.record_usage_detail(openai_format.usage_from_openai(raw))
    elif caller is Caller.RESPONSES:
        usage = responses_usage(raw)
        if usage is not None:
            ctx.record_usage_detail(usage)
        return data.get("id") if isinstance(data.get("id"), str) else None
    elif isinstance(raw, dict):
        ctx.record_usage_detail(anthropic_format.usage_from_anthropic(raw))
    return None


def _split_events(buffer: bytes) -> tuple[list[bytes], int]:
    """Complete SSE events (each ending with a blank line; LF line ends) and where the unfinished
    rest of `buffer` begins. Each event is one slice of `buffer`, its blank line included."""
    events: list[bytes] = []
    start = 0
    find = buffer.find
    while True:
        end = find(b"\n\n", start)
        if end < 0:
            return events, start
        if end > start:
            events.append(buffer[start:end + 2])
        start = end + 2


def _has_usage(event: bytes) -> bool:
    """Whether the event has a `usage` object: OpenAI sends `"usage":null` in every chunk of a stream
    that asked for usage, and parsing each of them would cost more than the rest of the relay."""
    at = event.find(b'"usage"')
    while at >= 0:
        at += 7
        while event[at:at + 1] in (b" ", b":"):
            at += 1
        if event[at:at + 1] == b"{":
            return True
        at = event.find(b'"usage"', at)
    return False


def _usage_chunk(event: bytes) -> tuple[dict | None, bool]:
    """(usage, is_usage_only_chunk) of one SSE event; cheap unless the event has a usage object."""
    if not _has_usage(event):
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


async def stream_broke(ctx: RequestContext, deployment: DeploymentInfo, adapter: ProviderAdapter,
                       exc: UpstreamError) -> str:
    # Bytes already reached the client: no failover now. The stream ends with an
    # error event in the caller's format, and the deployment's breaker hears of it.
    error = transport_error(adapter, exc)
    await breaker.record_failure(deployment.id, f"stream interrupted: {error.message}")
    ctx.stream_ends("stream_interrupted")
    return f"The provider's stream ended early: {error.message}"


def _event_filter(ctx: RequestContext, caller: Caller, client_wants_usage: bool,
                  seen: dict[str, str]) -> Callable[[bytes], bool]:
    """Meter the passed-through events of the caller's format; False drops one (OpenAI's usage chunk
    that the client did not ask for). The relay also shows it the terminal event."""
    if caller is Caller.OPENAI:
        def keep(event: bytes) -> bool:
            ctx.relayed_bytes += relayed_text_bytes(event, OPENAI_TEXT_KEYS)
            usage, usage_only = _usage_chunk(event)
            if usage is not None:
                ctx.record_usage_detail(openai_format.usage_from_openai(usage))
                if usage_only and not client_wants_usage:
                    return False
            return True
    elif caller is Caller.ANTHROPIC:
        # message_start and message_delta carry usage; the provider's own error event ends its stream.
        def keep(event: bytes) -> bool:
            ctx.relayed_bytes += relayed_text_bytes(event, ANTHROPIC_TEXT_KEYS)
            found = anthropic_format.stream_usage_of(event)
            if found is not None:
                ctx.record_usage_detail(found[0], output=found[1])
            elif event.startswith(b"event: error"):
                ctx.stream_ends("upstream_stream_error")
            return True
    elif caller is Caller.RESPONSES:
        # response.completed (or .incomplete / .failed) carries usage; response.created the id.
        def keep(event: bytes) -> bool:
            if "id" not in seen and event.startswith(b"event: response.created"):
                seen["id"] = _created_id(event) or ""
            ctx.relayed_bytes += relayed_text_bytes(event, RESPONSES_TEXT_KEYS)
            usage = responses_format.stream_usage(event)
            if usage is not None:
                ctx.record_usage_detail(usage)
            if event.startswith(b"event: response.failed"):
                ctx.error_class = "upstream_stream_error"
            return True
    else:
        # Gemini: every chunk may carry usageMetadata (the last is the whole); an error object ends it.
        def keep(event: bytes) -> bool:
            ctx.relayed_bytes += relayed_text_bytes(event, GEMINI_TEXT_KEYS)
            usage = gemini_format.stream_usage(event)
            if usage is not None:
                ctx.record_usage_detail(usage)
            elif event.startswith(b'data: {"error"'):
                ctx.stream_ends("upstream_stream_error")
            return True
    return keep


def _created_id(event: bytes) -> str | None:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                response = orjson.loads(line[5:]).get("response") or {}
            except (orjson.JSONDecodeError, AttributeError):
                return None
            ident = response.get("id") if isinstance(response, dict) else None
            return ident if isinstance(ident, str) else None
    return None


class _ArrayFramer:
    """Gemini's streamed JSON array (streamGenerateContent without alt=sse) from its SSE events:
    `[{...}`, then `\\n,{...}` per chunk, closed by `\\n]` (the gateway always asks for SSE upstream)."""

    def __init__(self) -> None:
        self.started = False

    def frame(self, event: bytes, *, last: bool = False) -> bytes:
        data = b"\n".join(line[5:].strip() for line in event.splitlines() if line.startswith(b"data:"))
        if not data:
            return b"]" if last and self.started else b""
        head = b"\n," if self.started else b"["
        self.started = True
        return head + data + (b"\n]" if last else b"")

    def close(self) -> bytes:
        return b"\n]" if self.started else b"[]"


async def _relay_same_format(
    ctx: RequestContext, caller: CallerFormat, adapter: ProviderAdapter, deployment: DeploymentInfo,
    response: UpstreamResponse, chunks: AsyncIterator[bytes], first: bytes, keep: Callable[[bytes], bool], *,
    before_end: Callable[[], Awaitable[None]] | None = None, framer: _ArrayFramer | None = None,
) -> AsyncIterator[bytes]:
    """Relay the provider's SSE bytes as they come, event by event, metering on the way.

    The stream's last event ([DONE], message_stop, response.completed, Gemini's chunk with
    the finish reason) goes out on its own, marked on ctx, so the pipeline can finish the
    request before releasing it (DESIGN §4).
    """
    pending = b""
    raw = first
    ended = False

    def out_of(events: list[bytes]) -> bytes:
        if framer is None:
            return b"".join(events)
        return b"".join(framer.frame(e) for e in events)

    try:
        while True:
            if ctx.first_byte_seconds is None:
                ctx.first_byte_seconds = ctx.elapsed()
            # Fewest copies: a chunk of whole events that are all passed on goes out as it came.
            data = pending + raw if pending else raw
            if b"\r" in data:
                data = data.replace(b"\r\n", b"\n")
            events, rest_at = _split_events(data)
            pending = data[rest_at:] if rest_at < len(data) else b""
            out: list[bytes] = []
            whole = framer is None
            for event in events:
                if caller.is_terminal(event):
                    if out:
                        chunk = out_of(out)
                        ctx.capture_response(chunk)
                        yield chunk
                        out = []
                    whole = False
                    keep(event)  # the last event may carry the usage (Responses, Gemini)
                    if before_end is not None:
                        await before_end()
                    last = framer.frame(event, last=True) if framer is not None else event
                    ended = True
                    ctx.capture_response(last)
                    ctx.stream_ends()
                    yield last
                elif keep(event):
                    out.append(event)
                else:
                    whole = False
            if out:
                if whole and rest_at == len(data) and sum(map(len, out)) == rest_at:
                    chunk = data  # every byte of it, in order: no join
                else:
                    chunk = out_of(out)
                ctx.capture_response(chunk)
                yield chunk
            try:
                raw = await chunks.__anext__()
            except StopAsyncIteration:
                break
        if pending.strip():
            yield pending if framer is None else framer.frame(pending)
        if framer is not None and not ended:
            yield framer.close()
    except UpstreamError as exc:
        message = await stream_broke(ctx, deployment, adapter, exc)
        if framer is not None:
            yield framer.frame(b"data: " + orjson.dumps(caller.error_body(502, message)), last=True)
        else:
            yield caller.stream_error(message, "stream_interrupted", 502)
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


def _encoder_error(caller: CallerFormat, encoder: Any, message: str, code: str, status: int) -> bytes:
    """An error event that fits the stream so far: the Responses and Gemini encoders know its sequence
    numbers and framing; the other formats' error events stand alone."""
    if caller.caller in (Caller.RESPONSES, Caller.GEMINI):
        return encoder.error_event(message, code, status)
    return caller.stream_error(message, code, status)


async def translated(ctx: RequestContext, inbound: Inbound, adapter: ProviderAdapter, deployment: DeploymentInfo,
                     route: RouteInfo, ir: ChatRequest) -> HttpResponse:
    caller = inbound.format
    if ctx.max_output_tokens is not None:
        ir.max_tokens = ctx.max_output_tokens  # the bound admission reserved, in the provider's own field
    payload = adapter.encode_request(ir, upstream_model=deployment.upstream_model,
                                     default_max_tokens=route.default_max_tokens, stream=ctx.stream)
    url = adapter.chat_url(upstream_model=deployment.upstream_model, stream=ctx.stream)
    headers = adapter.request_headers({})
    if not ctx.stream:
        response, content = await post_json(ctx, adapter, url, payload, headers)
        try:
            data = orjson.loads(content)
            answer = adapter.decode_response(data)
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            raise ProviderError(f"Provider '{deployment.provider.name}' sent an answer that is not valid JSON "
                                f"({exc.__class__.__name__}).", error_class="upstream_invalid_answer",
                                retryable=False, status=502) from None
        answer.model = answer.model or deployment.upstream_model
        ctx.record_usage_detail(answer.usage)
        out = orjson.dumps(caller.encode_response(answer, inbound.body))
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
    encoder = caller.stream_encoder(StreamSetup(body=inbound.body, include_usage=ir.include_usage,
                                                model=deployment.upstream_model,
                                                upstream_wire=adapter.wire_format, sse=inbound.sse))
    # The pipeline wraps and stamps both kinds alike; django-stubs has no common base with headers.
    return StreamResponse(  # type: ignore[return-value]
        _relay_translated(ctx, caller, adapter, deployment, response, chunks, parser, decoder, encoder, head),
        status=200, headers=STREAM_HEADERS,
        content_type=getattr(encoder, "content_type", None) or SSE_CONTENT_TYPE,
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
        terminal = encoder.terminal
        ctx.capture_response(terminal)
        ctx.stream_ends()
        yield terminal
    except UpstreamError as exc:
        message = await stream_broke(ctx, deployment, adapter, exc)
        yield _encoder_error(caller, encoder, message, "stream_interrupted", 502)
    except _UpstreamStreamError as exc:
        await breaker.record_failure(deployment.id, f"error inside the stream: {exc.event.message}")
        ctx.stream_ends("upstream_stream_error")
        yield _encoder_error(caller, encoder, f"The provider reported an error: {exc.event.message}",
                             "upstream_stream_error", 502)
    finally:
        await response.aclose()
