"""Anthropic Messages wire format: the caller side (our /v1/messages) and the provider side."""
from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.providers.base import ProviderAdapter
from proxy.providers.ir import (
    ChatRequest,
    ChatResponse,
    Finish,
    Image,
    Message,
    Part,
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
    ToolChoice,
    ToolDef,
    ToolResult,
    TranslationError,
    Usage,
    fill_tool_result_names,
    parse_data_url,
)
from proxy.providers.sse import sse_event

DEFAULT_VERSION = "2023-06-01"

FINISH_TO_ANTHROPIC: dict[str, str] = {
    "end": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence", "tool_use": "tool_use",
    "content_filter": "refusal",
}
FINISH_FROM_ANTHROPIC: dict[str, Finish] = {
    "end_turn": "end", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence", "tool_use": "tool_use",
    "refusal": "content_filter", "pause_turn": "end", "model_context_window_exceeded": "max_tokens",
}
# Anthropic error type for an HTTP status, and back.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error",
}
STATUS_OF_ERROR_TYPE: dict[str, int] = {v: k for k, v in ERROR_TYPES.items()} | {"api_error": 500}

_TOOL_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


# --- Caller side -------------------------------------------------------------------------


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def _image(block: dict[str, Any], where: str) -> Image:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return Image(media_type=source.get("media_type"), data=source.get("data"))
    if source.get("type") == "url":
        return Image(url=source.get("url"))
    raise TranslationError(f"'{where}.source' of type {source.get('type')!r} cannot be sent to this provider.",
                           param=where)


def decode_request(body: dict[str, Any]) -> ChatRequest:
    """An Anthropic Messages body (already validated by proxy.parsing) as the internal representation."""
    system_field = body.get("system")
    if isinstance(system_field, str):
        system = [system_field] if system_field else []
    else:
        system = [str(b.get("text", "")) for b in system_field or [] if isinstance(b, dict)]
    messages: list[Message] = []
    for index, raw in enumerate(body["messages"]):
        role, content = raw["role"], raw.get("content")
        if isinstance(content, str):
            if content or role == "user":
                messages.append(Message(role, [Text(content)]))
            continue
        current: Message | None = None
        for number, block in enumerate(content or []):
            where = f"messages[{index}].content[{number}]"
            kind = block.get("type")
            if kind == "tool_result":
                part: Part = ToolResult(str(block.get("tool_use_id") or ""), _result_text(block.get("content")),
                                        None, bool(block.get("is_error")))
                part_role = "tool"
            elif kind == "text":
                part, part_role = Text(str(block.get("text", ""))), role
            elif kind == "image":
                part, part_role = _image(block, where), role
            elif kind == "tool_use":
                part = ToolCall(str(block.get("id") or ""), str(block.get("name") or ""),
                                orjson.dumps(block.get("input") or {}).decode())
                part_role = role
            elif kind in ("thinking", "redacted_thinking"):
                continue  # the provider's own reasoning: meaningless to another provider
            else:
                raise TranslationError(f"Content blocks of type {kind!r} ('{where}') cannot be sent to this "
                                       "provider.", param=where)
            if current is None or current.role != part_role:
                current = Message(part_role, [])  # type: ignore[arg-type]
                messages.append(current)
            current.parts.append(part)
    fill_tool_result_names(messages)
    tools = []
    for index, tool in enumerate(body.get("tools") or []):
        if tool.get("type") not in (None, "custom"):
            raise TranslationError(f"The server tool 'tools[{index}]' ({tool.get('type')}) is Anthropic's own "
                                   "and cannot be used with this provider.", param=f"tools[{index}]")
        tools.append(ToolDef(str(tool["name"]), tool.get("description"), tool.get("input_schema")))
    choice = body.get("tool_choice")
    tool_choice, parallel = None, None
    if isinstance(choice, dict):
        kind = choice.get("type")
        tool_choice = {"auto": ToolChoice("auto"), "any": ToolChoice("required"), "none": ToolChoice("none"),
                       "tool": ToolChoice("tool", choice.get("name"))}.get(kind)
        if choice.get("disable_parallel_tool_use"):
            parallel = False
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    return ChatRequest(
        messages=messages, system=system, tools=tools, tool_choice=tool_choice, parallel_tool_calls=parallel,
        max_tokens=body.get("max_tokens"), temperature=body.get("temperature"), top_p=body.get("top_p"),
        stop=list(body.get("stop_sequences") or []), stream=bool(body.get("stream")),
        user=metadata.get("user_id") if isinstance(metadata.get("user_id"), str) else None,
    )


def _tool_id(ident: str) -> str:
    # Anthropic accepts only [A-Za-z0-9_-] in tool ids; other providers' ids may hold more.
    return _TOOL_ID_UNSAFE.sub("_", ident) or "toolu_tollgate"


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _content_blocks(parts: list[Part]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ToolCall):
            blocks.append({"type": "tool_use", "id": _tool_id(part.id), "name": part.name,
                           "input": _arguments(part.arguments)})
    return blocks


def encode_response(response: ChatResponse) -> dict[str, Any]:
    return {
        "id": response.id, "type": "message", "role": "assistant", "model": response.model,
        "content": _content_blocks(response.parts),
        "stop_reason": FINISH_TO_ANTHROPIC[response.finish], "stop_sequence": response.stop_sequence,
        "usage": {"input_tokens": response.usage.input_tokens or 0,
                  "output_tokens": response.usage.output_tokens or 0},
    }


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return sse_event(name, orjson.dumps(payload))


class StreamEncoder:
    """Internal stream events in, Anthropic's event sequence out, one event at a time."""

    terminal = _event("message_stop", {"type": "message_stop"})

    def __init__(self, *, model: str = "") -> None:
        self.model = model
        self.started = False
        self.block = -1
        self.open_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}
        self.finish: Finish = "end"
        self.finish_seen = False
        self.stop_sequence: str | None = None
        self.usage = Usage()

    def _start(self, ident: str = "", model: str = "", input_tokens: int | None = None) -> bytes:
        self.started = True
        if input_tokens is not None:
            self.usage.input_tokens = input_tokens
        return _event("message_start", {"type": "message_start", "message": {
            "id": ident or "msg_tollgate", "type": "message", "role": "assistant", "model": model or self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens or 0, "output_tokens": 0}}})

    def _close_block(self) -> bytes:
        if self.open_kind is None:
            return b""
        self.open_kind = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self.block += 1
        self.open_kind = kind
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.block,
                                                    "content_block": block})

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamStart):
            return b"" if self.started else self._start(event.id, event.model, event.input_tokens)
        out = b"" if self.started else self._start()
        if isinstance(event, TextDelta):
            if self.open_kind != "text":
                out += self._open_block("text", {"type": "text", "text": ""})
            return out + _event("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                        "delta": {"type": "text_delta", "text": event.text}})
        if isinstance(event, ToolCallStart):
            out += self._open_block("tool", {"type": "tool_use", "id": _tool_id(event.id), "name": event.name,
                                             "input": {}})
            self.tool_blocks[event.index] = self.block
            return out
        if isinstance(event, ToolCallDelta):
            index = self.tool_blocks.get(event.index)
            if index is None:
                return out
            return out + _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                "type": "input_json_delta", "partial_json": event.arguments}})
        if isinstance(event, StreamFinish):
            self.finish, self.finish_seen, self.stop_sequence = event.finish, True, event.stop_sequence
        elif isinstance(event, StreamUsage):
            if event.input_tokens is not None:
                self.usage.input_tokens = event.input_tokens
            if event.output_tokens is not None:
                self.usage.output_tokens = event.output_tokens
        return out

    def tail(self) -> bytes:
        """The closing events before `message_stop`: usage is complete only now for some providers."""
        out = (b"" if self.started else self._start()) + self._close_block()
        usage: dict[str, int] = {"output_tokens": self.usage.output_tokens or 0}
        if self.usage.input_tokens is not None:
            usage["input_tokens"] = self.usage.input_tokens
        return out + _event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": FINISH_TO_ANTHROPIC[self.finish], "stop_sequence": self.stop_sequence},
            "usage": usage})

    @staticmethod
    def error_event(message: str, code: str, status: int = 502) -> bytes:
        return _event("error", {"type": "error", "error": {"type": error_type(status), "message": message}})


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


def encode_request(request: ChatRequest, *, model: str, default_max_tokens: int, stream: bool) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        role = "assistant" if message.role == "assistant" else "user"
        blocks: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, Text):
                blocks.append({"type": "text", "text": part.text})
            elif isinstance(part, Image):
                blocks.append(_image_block(part))
            elif isinstance(part, ToolCall):
                blocks.append({"type": "tool_use", "id": _tool_id(part.id), "name": part.name,
                               "input": _arguments(part.arguments)})
            elif isinstance(part, ToolResult):
                block: dict[str, Any] = {"type": "tool_result", "tool_use_id": _tool_id(part.tool_call_id),
                                         "content": part.content}
                if part.is_error:
                    block["is_error"] = True
                blocks.append(block)
        # Anthropic wants user and assistant turns to alternate: tool results and the
        # user's next words share one user turn.
        if messages and messages[-1]["role"] == role:
            previous = messages[-1]["content"]
            if isinstance(previous, str):
                previous = messages[-1]["content"] = [{"type": "text", "text": previous}]
            previous.extend(blocks)
        elif len(blocks) == 1 and blocks[0]["type"] == "text":
            messages.append({"role": role, "content": blocks[0]["text"]})
        else:
            messages.append({"role": role, "content": blocks})
    payload: dict[str, Any] = {"model": model, "max_tokens": request.max_tokens or default_max_tokens,
                               "messages": messages}
    if len(request.system) == 1:
        payload["system"] = request.system[0]
    elif request.system:
        payload["system"] = [{"type": "text", "text": text} for text in request.system]
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
    if request.temperature is not None:
        # OpenAI's scale goes to 2, Anthropic's to 1.
        payload["temperature"] = min(float(request.temperature), 1.0)
    if request.top_p is not None:
        payload["top_p"] = request.top_p
    if request.stop:
        payload["stop_sequences"] = request.stop
    if request.user is not None:
        payload["metadata"] = {"user_id": request.user}
    if stream:
        payload["stream"] = True
    return payload


def _input_tokens(usage: dict[str, Any]) -> int | None:
    base = usage.get("input_tokens")
    if not isinstance(base, int):
        return None
    # Cached prompt tokens are prompt tokens too (billed at other prices).
    return base + (usage.get("cache_creation_input_tokens") or 0) + (usage.get("cache_read_input_tokens") or 0)


def decode_response(data: dict[str, Any]) -> ChatResponse:
    parts: list[Part] = []
    for block in data.get("content") or []:
        if block.get("type") == "text":
            parts.append(Text(str(block.get("text", ""))))
        elif block.get("type") == "tool_use":
            parts.append(ToolCall(str(block.get("id") or ""), str(block.get("name") or ""),
                                  orjson.dumps(block.get("input") or {}).decode()))
    usage = data.get("usage") or {}
    return ChatResponse(
        id=str(data.get("id") or ""), model=str(data.get("model") or ""), parts=parts,
        finish=FINISH_FROM_ANTHROPIC.get(data.get("stop_reason") or "end_turn", "end"),
        stop_sequence=data.get("stop_sequence"),
        usage=Usage(_input_tokens(usage), usage.get("output_tokens")),
    )


class StreamDecoder:
    """Anthropic's event sequence in, internal stream events out."""

    def __init__(self) -> None:
        self.tool_of_block: dict[int, int] = {}
        self.input_tokens: int | None = None

    def feed(self, event: str | None, data: bytes) -> list[StreamEvent]:
        obj = orjson.loads(data)
        kind = obj.get("type") or event
        if kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta" and delta.get("text"):
                return [TextDelta(delta["text"])]
            if delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                tool = self.tool_of_block.get(obj.get("index", 0))
                return [] if tool is None else [ToolCallDelta(tool, delta["partial_json"])]
            return []
        if kind == "message_start":
            message = obj.get("message") or {}
            self.input_tokens = _input_tokens(message.get("usage") or {})
            return [StreamStart(str(message.get("id") or ""), str(message.get("model") or ""), self.input_tokens)]
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
            return []
        if kind == "message_delta":
            delta, usage = obj.get("delta") or {}, obj.get("usage") or {}
            out = []
            if delta.get("stop_reason"):
                out.append(StreamFinish(FINISH_FROM_ANTHROPIC.get(delta["stop_reason"], "end"),
                                        delta.get("stop_sequence")))
            input_tokens = _input_tokens(usage)
            out.append(StreamUsage(input_tokens if input_tokens is not None else self.input_tokens,
                                   usage.get("output_tokens")))
            return out
        if kind == "error":
            error = obj.get("error") or {}
            return [StreamError(str(error.get("message") or "error"),
                                STATUS_OF_ERROR_TYPE.get(str(error.get("type")), 500))]
        return []  # ping, content_block_stop, message_stop

    def close(self) -> list[StreamEvent]:
        return []


def stream_usage(event: bytes) -> tuple[int | None, int | None] | None:
    """(input, output) tokens of a passed-through `message_start` / `message_delta` event; cheap otherwise."""
    if b"message_start" not in event and b"message_delta" not in event:
        return None
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                obj = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return None
            if obj.get("type") == "message_start":
                usage = (obj.get("message") or {}).get("usage") or {}
                return _input_tokens(usage), None
            if obj.get("type") == "message_delta":
                usage = obj.get("usage") or {}
                return _input_tokens(usage), usage.get("output_tokens")
    return None


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
