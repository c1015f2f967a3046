"""Anthropic Messages wire format: the provider side, and the caller side re-exported.

The caller side (our /v1/messages: decode_request, encode_response, StreamEncoder,
error_body) lives in proxy.providers.anthropic_caller with the constants both sides share;
its names are importable from here, as the pipeline has always imported them.
"""
from __future__ import annotations

from typing import Any

import orjson

from proxy.providers.anthropic_caller import (
    ERROR_TYPES,
    FINISH_FROM_ANTHROPIC,
    FINISH_TO_ANTHROPIC,
    STATUS_OF_ERROR_TYPE,
    StreamEncoder,
    arguments_object,
    decode_request,
    encode_response,
    error_body,
    error_type,
    reasoning_block,
    tool_id,
    usage_from_anthropic,
    usage_to_anthropic,
)
from proxy.providers.base import ProviderAdapter
from proxy.providers.common import MIN_ANTHROPIC_BUDGET, reasoning_budget, system_note
from proxy.providers.ir import (
    ChatRequest,
    ChatResponse,
    Image,
    Part,
    Reasoning,
    ReasoningDelta,
    StreamError,
    StreamEvent,
    StreamFinish,
    StreamStart,
    StreamUsage,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    TranslationError,
    Usage,
    parse_data_url,
)

__all__ = [
    "ERROR_TYPES", "FINISH_FROM_ANTHROPIC", "FINISH_TO_ANTHROPIC", "STATUS_OF_ERROR_TYPE", "AnthropicAdapter",
    "StreamDecoder", "StreamEncoder", "decode_request", "decode_response", "encode_request", "encode_response",
    "error_body", "error_type", "stream_usage", "stream_usage_detail", "stream_usage_of", "usage_to_anthropic",
]

DEFAULT_VERSION = "2023-06-01"


# --- Provider side -----------------------------------------------------------------------


def _image_block(image: Image) -> dict[str, Any]:
    if image.url is not None:
        inline = parse_data_url(image.url)
        if inline is None:
            return {"type": "image", "source": {"type": "url", "url": image.url}}
        media_type, data = inline
    else:
        media_type, data = image.media_type or "image/png", image.data or ""
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _blocks(parts: list[Part], role: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            text = system_note(part.text) if role == "system" else part.text
            blocks.append({"type": "text", "text": text})
        elif isinstance(part, Image):
            blocks.append(_image_block(part))
        elif isinstance(part, ToolCall):
            blocks.append({"type": "tool_use", "id": tool_id(part.id), "name": part.name,
                           "input": arguments_object(part.arguments)})
        elif isinstance(part, ToolResult):
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_id(part.tool_call_id),
                                     "content": part.content}
            if part.is_error:
                block["is_error"] = True
            blocks.append(block)
        elif isinstance(part, Reasoning) and role == "assistant":
            thinking = reasoning_block(part)  # Anthropic's own, signed; others' reasoning is dropped
            if thinking is not None:
                blocks.append(thinking)
    return blocks


def _messages(request: ChatRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        # A system message inside the conversation is folded into a user turn, marked as the
        # system's (common.system_note): Anthropic takes role "system" in `messages` only with
        # the mid-conversation-system beta, and the fold works on every model without it.
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message.parts, message.role)
        if not blocks:
            continue
        # Anthropic wants user and assistant turns to alternate: tool results, system notes and
        # the user's next words share one user turn.
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    for turn in messages:
        content = turn["content"]
        if turn["role"] == "user":
            # Tool results must open the user turn that answers the calls.
            content.sort(key=lambda block: block["type"] != "tool_result")
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return messages


def _thinking_allowed(request: ChatRequest, messages: list[dict[str, Any]]) -> bool:
    """Whether thinking can be switched on for this history without Anthropic refusing it.

    Anthropic refuses thinking with a forced tool choice, and in a tool loop whose last
    assistant turn does not open with its own signed thinking block (which callers of
    other formats cannot send back): such turns go without thinking.
    """
    if request.tool_choice is not None and request.tool_choice.mode in ("required", "tool"):
        return False
    last = next((m for m in reversed(messages) if m["role"] == "assistant"), None)
    if last is None or isinstance(last["content"], str):
        return True
    uses_tools = any(block["type"] == "tool_use" for block in last["content"])
    return not uses_tools or last["content"][0]["type"] in ("thinking", "redacted_thinking")


def _structured_output_note(response_format: dict[str, Any]) -> str:
    """Structured output asked of another format, as an instruction (Anthropic's own structured
    outputs need a beta on several models; Claude follows a plain instruction reliably)."""
    schema = response_format.get("schema")
    if response_format.get("type") == "json_schema" and isinstance(schema, dict):
        return ("Respond only with a JSON value, without any other text or code fences, that matches this JSON "
                "Schema: " + orjson.dumps(schema).decode())
    return "Respond only with a JSON object, without any other text or code fences."


def encode_request(request: ChatRequest, *, model: str, default_max_tokens: int, stream: bool) -> dict[str, Any]:
    """The internal representation as an Anthropic Messages body.

    Refused: n > 1 (Anthropic answers once). Dropped: reasoning of other providers, a
    thinking budget that does not fit below max_tokens, temperature and low top_p while thinking.
    """
    if request.n > 1:
        raise TranslationError("Anthropic's API gives one answer per request; 'n' greater than 1 cannot be "
                               "sent to this provider.", param="n")
    messages = _messages(request)
    max_tokens = request.max_tokens or default_max_tokens
    payload: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    system = list(request.system)
    if request.response_format is not None:
        system.append(_structured_output_note(request.response_format))
    if len(system) == 1:
        payload["system"] = system[0]
    elif system:
        payload["system"] = [{"type": "text", "text": text} for text in system]
    if request.tools:
        payload["tools"] = [{"name": t.name, **({"description": t.description} if t.description is not None else {}),
                             "input_schema": t.parameters if t.parameters is not None else {"type": "object"}}
                            for t in request.tools]
    choice: dict[str, Any] | None = None
    if request.tool_choice is not None:
        mode = request.tool_choice.mode
        choice = {"type": {"auto": "auto", "none": "none", "required": "any", "tool": "tool"}[mode]}
        if mode == "tool":
            choice["name"] = request.tool_choice.name
    if request.parallel_tool_calls is False and request.tools:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None and request.tools:
        payload["tool_choice"] = choice
    budget = reasoning_budget(request)
    thinking = False
    if budget and _thinking_allowed(request, messages):
        # Anthropic's own client sends max_tokens - 1 at most; below its minimum there is no thinking.
        budget = min(max(budget, MIN_ANTHROPIC_BUDGET), max_tokens - 1)
        if budget >= MIN_ANTHROPIC_BUDGET:
            payload["thinking"] = {"type": "enabled", "budget_tokens": budget}
            thinking = True
    if request.temperature is not None and not (thinking and request.temperature != 1):
        # OpenAI's scale goes to 2, Anthropic's to 1; with thinking only the default is accepted.
        payload["temperature"] = min(float(request.temperature), 1.0)
    if request.top_p is not None and not (thinking and request.top_p < 0.95):
        payload["top_p"] = request.top_p
    if request.stop:
        payload["stop_sequences"] = request.stop
    if request.user is not None:
        payload["metadata"] = {"user_id": request.user}
    if stream:
        payload["stream"] = True
    return payload


def _response_part(block: dict[str, Any]) -> Part | None:
    kind = block.get("type")
    if kind == "text":
        return Text(str(block.get("text", "")))
    if kind == "tool_use":
        return ToolCall(str(block.get("id") or ""), str(block.get("name") or ""),
                        orjson.dumps(block.get("input") or {}).decode())
    if kind == "thinking":
        signature = block.get("signature")
        return Reasoning(str(block.get("thinking") or ""), signature if isinstance(signature, str) else None,
                         wire="anthropic")
    if kind == "redacted_thinking":
        return Reasoning("", str(block.get("data") or ""), redacted=True, wire="anthropic")
    return None  # server tool blocks: Anthropic ran them; their outcome is in the text that follows


def decode_response(data: dict[str, Any]) -> ChatResponse:
    parts = [part for block in data.get("content") or [] if isinstance(block, dict)
             if (part := _response_part(block)) is not None]
    return ChatResponse(
        id=str(data.get("id") or ""), model=str(data.get("model") or ""), parts=parts,
        finish=FINISH_FROM_ANTHROPIC.get(data.get("stop_reason") or "end_turn", "end"),
        stop_sequence=data.get("stop_sequence"),
        usage=usage_from_anthropic(data.get("usage")),
    )


def _stream_usage(usage: Usage) -> StreamUsage:
    return StreamUsage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens,
                       usage.cache_write_1h_tokens, usage.reasoning_tokens)


class StreamDecoder:
    """Anthropic's event sequence in, internal stream events out."""

    def __init__(self) -> None:
        self.tool_of_block: dict[int, int] = {}
        self.start_usage = Usage()

    def _usage(self, raw: Any) -> StreamUsage:
        """message_delta's usage, completed from message_start's (older API versions send only output)."""
        usage = usage_from_anthropic(raw)
        if usage.input_tokens is None:
            start = self.start_usage
            usage.input_tokens = start.input_tokens
            usage.cache_read_tokens = usage.cache_read_tokens or start.cache_read_tokens
            usage.cache_write_tokens = usage.cache_write_tokens or start.cache_write_tokens
            usage.cache_write_1h_tokens = usage.cache_write_1h_tokens or start.cache_write_1h_tokens
        return _stream_usage(usage)

    def feed(self, event: str | None, data: bytes) -> list[StreamEvent]:
        obj = orjson.loads(data)
        kind = obj.get("type") or event
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            delta_kind = delta.get("type")
            if delta_kind == "text_delta" and delta.get("text"):
                return [TextDelta(delta["text"])]
            if delta_kind == "input_json_delta" and delta.get("partial_json"):
                tool = self.tool_of_block.get(obj.get("index", 0))
                return [] if tool is None else [ToolCallDelta(tool, delta["partial_json"])]
            if delta_kind == "thinking_delta" and delta.get("thinking"):
                return [ReasoningDelta(str(delta["thinking"]), wire="anthropic")]
            if delta_kind == "signature_delta" and delta.get("signature"):
                return [ReasoningDelta("", str(delta["signature"]), wire="anthropic")]
            return []
        if kind == "message_start":
            message = obj.get("message") or {}
            self.start_usage = usage_from_anthropic(message.get("usage"))
            return [StreamStart(str(message.get("id") or ""), str(message.get("model") or ""),
                                self.start_usage.input_tokens)]
        if kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "text" and block.get("text"):
                return [TextDelta(block["text"])]
            if block.get("type") == "tool_use":
                tool = len(self.tool_of_block)
                self.tool_of_block[obj.get("index", 0)] = tool
                out: list[StreamEvent] = [ToolCallStart(tool, str(block.get("id") or ""), str(block.get("name")))]
                if block.get("input"):
                    out.append(ToolCallDelta(tool, orjson.dumps(block["input"]).decode()))
                return out
            return []  # thinking (its text comes in deltas), redacted thinking, server tool blocks
        if kind == "message_delta":
            delta = obj.get("delta") or {}
            out = []
            if delta.get("stop_reason"):
                out.append(StreamFinish(FINISH_FROM_ANTHROPIC.get(delta["stop_reason"], "end"),
                                        delta.get("stop_sequence")))
            out.append(self._usage(obj.get("usage")))
            return out
        if kind == "error":
            error = obj.get("error") or {}
            return [StreamError(str(error.get("message") or "error"),
                                STATUS_OF_ERROR_TYPE.get(str(error.get("type")), 500))]
        return []  # ping, content_block_stop, message_stop

    def close(self) -> list[StreamEvent]:
        return []


def _input_tokens(usage: dict[str, Any]) -> int | None:
    """The whole prompt of a usage object, cache reads and writes included (proxy/calls.py's name for it)."""
    return usage_from_anthropic(usage).input_tokens


def _usage_event(event: bytes) -> tuple[str, dict[str, Any]] | None:
    if b"message_start" not in event and b"message_delta" not in event:
        return None
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                obj = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return None
            if not isinstance(obj, dict):
                return None
            if obj.get("type") == "message_start":
                return "start", (obj.get("message") or {}).get("usage") or {}
            if obj.get("type") == "message_delta":
                return "delta", obj.get("usage") or {}
    return None


def stream_usage(event: bytes) -> tuple[int | None, int | None] | None:
    """(input, output) tokens of a passed-through `message_start` / `message_delta` event; cheap otherwise."""
    found = _usage_event(event)
    if found is None:
        return None
    kind, raw = found
    usage = usage_from_anthropic(raw)
    return usage.input_tokens, (usage.output_tokens if kind == "delta" else None)


def stream_usage_detail(event: bytes) -> StreamUsage | None:
    """Every token class of a passed-through `message_start` / `message_delta` event (None for others).

    message_start carries the prompt's classes; message_delta the output (and, on current API
    versions, the prompt's again): merge what each says, later values winning.
    """
    found = _usage_event(event)
    return None if found is None else _stream_usage(usage_from_anthropic(found[1]))


def stream_usage_of(event: bytes) -> tuple[StreamUsage, bool] | None:
    """Every token class of a passed-through `message_start` / `message_delta` event, and whether its
    output count is the real one: message_start's `output_tokens` (1) is said before any output."""
    found = _usage_event(event)
    return None if found is None else (_stream_usage(usage_from_anthropic(found[1])), found[0] == "delta")


class AnthropicAdapter(ProviderAdapter):
    wire_format = "anthropic"
    FORWARDED_HEADERS = ("anthropic-beta",)

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.provider.credential} if self.provider.credential else {}

    def request_headers(self, client_headers: dict[str, str] | None = None) -> dict[str, str]:
        headers = super().request_headers(client_headers)
        headers.setdefault("anthropic-version", DEFAULT_VERSION)
        return headers

    def _api_base(self) -> str:
        # base_url as Anthropic's SDK takes it (https://api.anthropic.com); tolerate a trailing /v1.
        base = self.provider.base_url
        return base if base.endswith("/v1") else f"{base}/v1"

    def chat_url(self, *, upstream_model: str, stream: bool) -> str:
        return f"{self._api_base()}/messages"

    def count_tokens_url(self) -> str:
        return f"{self._api_base()}/messages/count_tokens"

    def health_url(self) -> str:
        return f"{self._api_base()}/models"

    def encode_request(self, request: ChatRequest, *, upstream_model: str, default_max_tokens: int,
                       stream: bool) -> dict[str, Any]:
        return encode_request(request, model=upstream_model, default_max_tokens=default_max_tokens, stream=stream)

    def decode_response(self, data: dict[str, Any]) -> ChatResponse:
        return decode_response(data)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder()
