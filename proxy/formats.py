"""The caller's side of the wire, one row per caller format (DESIGN §5).

How a caller's body is read and how its answers, errors and stream events are
written: the call (proxy.calls, proxy.relay) and the pipeline's stream wrapper
(proxy.pipeline) look them up here instead of each switching on the caller, as
proxy/errors.py does for the gateway's own refusals.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from proxy.errors import Caller
from proxy.providers import anthropic as anthropic_format
from proxy.providers import gemini_caller
from proxy.providers import openai as openai_format
from proxy.providers import responses as responses_format
from proxy.providers.ir import ChatRequest, ChatResponse


@dataclass(frozen=True, slots=True)
class StreamSetup:
    """What a caller's stream encoder may need to know of the request it answers."""

    body: dict[str, Any]  # the caller's own body (the Responses API echoes its settings)
    include_usage: bool
    model: str
    upstream_wire: str  # whose reasoning signatures the stream carries
    sse: bool = True  # Gemini: alt=sse, or Google's streamed JSON array


@dataclass(frozen=True)
class CallerFormat:
    """The caller's side of a translation: how its body is read and its answers are written."""

    caller: Caller
    wire: str
    # (body, stream) -> the internal representation (Gemini's URL, not its body, says whether it streams).
    decode_request: Callable[[dict[str, Any], bool], ChatRequest]
    # (answer, the caller's body) -> the caller's answer.
    encode_response: Callable[[ChatResponse, dict[str, Any]], dict[str, Any]]
    error_body: Callable[..., dict[str, Any]]
    stream_encoder: Callable[[StreamSetup], Any]
    # (message, code, status) -> the error event that ends a stream already under way (its 200 is sent).
    stream_error: Callable[[str, str, int], bytes]
    # Whether a passed-through event (the provider speaks the caller's format) is the stream's last:
    # the relay holds it until the request is finished (DESIGN §4).
    is_terminal: Callable[[bytes], bool]


@dataclass(slots=True)
class Inbound:
    """The caller's request as the call needs it."""

    format: CallerFormat
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    sse: bool = True  # Gemini's streamGenerateContent: alt=sse, or the streamed JSON array
    # Responses API: whether OpenAI keeps the response (the route allows it and the caller did not say no),
    # so that a later previous_response_id is pinned to the deployment that answered.
    stored: bool = False


def _openai_stream_error(message: str, code: str, status: int) -> bytes:
    return openai_format.StreamEncoder.error_event(message, code)  # OpenAI's error events carry no status


def _gemini_stream_error(message: str, code: str, status: int) -> bytes:
    # In alt=sse framing, which is how the SDKs and Gemini CLI stream.
    return gemini_caller.sse_error_event(message, status)


def _gemini_is_terminal(event: bytes) -> bool:
    # Gemini has no end event of its own: its last chunk is the one with the finish reason (and the usage).
    return b'"finishReason"' in event


CALLER_FORMATS: dict[Caller, CallerFormat] = {
    Caller.OPENAI: CallerFormat(
        Caller.OPENAI, "openai", lambda body, stream: openai_format.decode_request(body),
        lambda answer, body: openai_format.encode_response(answer), openai_format.error_body,
        stream_encoder=lambda setup: openai_format.StreamEncoder(include_usage=setup.include_usage),
        stream_error=_openai_stream_error,
        is_terminal=lambda event: event.startswith(b"data: [DONE]")),
    Caller.ANTHROPIC: CallerFormat(
        Caller.ANTHROPIC, "anthropic", lambda body, stream: anthropic_format.decode_request(body),
        lambda answer, body: anthropic_format.encode_response(answer), anthropic_format.error_body,
        # Anthropic's stream reports usage in message_start and message_delta whatever the request asked.
        stream_encoder=lambda setup: anthropic_format.StreamEncoder(),
        stream_error=anthropic_format.StreamEncoder.error_event,
        is_terminal=lambda event: event.startswith(b"event: message_stop")),
    Caller.RESPONSES: CallerFormat(
        Caller.RESPONSES, "responses", lambda body, stream: responses_format.decode_request(body),
        responses_format.encode_response, responses_format.error_body,
        stream_encoder=lambda setup: responses_format.StreamEncoder(
            request=setup.body, model=setup.model, upstream_wire=setup.upstream_wire),
        stream_error=responses_format.stream_error,
        is_terminal=lambda event: event.startswith(responses_format.TERMINAL_EVENTS)),
    Caller.GEMINI: CallerFormat(
        Caller.GEMINI, "gemini", lambda body, stream: gemini_caller.decode_request(body, stream=stream),
        lambda answer, body: gemini_caller.encode_response(answer), gemini_caller.error_body,
        stream_encoder=lambda setup: gemini_caller.StreamEncoder(model=setup.model, sse=setup.sse),
        stream_error=_gemini_stream_error,
        is_terminal=_gemini_is_terminal),
}


def stream_error_event(caller: Caller, message: str, code: str, status: int = 502) -> bytes:
    """The error event, in the caller's format, that ends a stream already under way."""
    return CALLER_FORMATS[caller].stream_error(message, code, status)
