"""The caller's side of the wire, one row per caller format (DESIGN §5).

How a caller's body is read and how its answers, errors and stream events are
written: the call (proxy.calls) and the pipeline's stream wrapper (proxy.pipeline)
look them up here instead of each switching on the caller, as proxy/errors.py does
for the gateway's own refusals.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from proxy.errors import Caller
from proxy.providers import anthropic as anthropic_format
from proxy.providers import openai as openai_format
from proxy.providers.ir import ChatRequest


@dataclass(frozen=True)
class CallerFormat:
    """The caller's side of a translation: how its body is read and its answers are written."""

    caller: Caller
    wire: str
    decode_request: Callable[[dict[str, Any]], ChatRequest]
    encode_response: Callable[[Any], dict[str, Any]]
    error_body: Callable[..., dict[str, Any]]
    # (include_usage) -> an encoder of internal stream events into the caller's SSE.
    stream_encoder: Callable[[bool], Any]
    # (message, code, status) -> the error event that ends a stream already under way (its 200 is sent).
    stream_error: Callable[[str, str, int], bytes]
    # How the stream's last event starts, when the provider speaks the caller's format.
    stream_terminal: bytes


def _openai_stream_error(message: str, code: str, status: int) -> bytes:
    return openai_format.StreamEncoder.error_event(message, code)  # OpenAI's error events carry no status


CALLER_FORMATS: dict[Caller, CallerFormat] = {
    Caller.OPENAI: CallerFormat(
        Caller.OPENAI, "openai", openai_format.decode_request, openai_format.encode_response,
        openai_format.error_body,
        stream_encoder=lambda include_usage: openai_format.StreamEncoder(include_usage=include_usage),
        stream_error=_openai_stream_error,
        stream_terminal=b"data: [DONE]"),
    Caller.ANTHROPIC: CallerFormat(
        Caller.ANTHROPIC, "anthropic", anthropic_format.decode_request, anthropic_format.encode_response,
        anthropic_format.error_body,
        # Anthropic's stream reports usage in message_start and message_delta whatever the request asked.
        stream_encoder=lambda include_usage: anthropic_format.StreamEncoder(),
        stream_error=anthropic_format.StreamEncoder.error_event,
        stream_terminal=b"event: message_stop"),
}


def stream_error_event(caller: Caller, message: str, code: str, status: int = 502) -> bytes:
    """The error event, in the caller's format, that ends a stream already under way."""
    return CALLER_FORMATS[caller].stream_error(message, code, status)
