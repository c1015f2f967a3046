"""The provider side: the internal representation to an OpenAI Responses upstream, and its answers back.

For OpenAI models served only through /v1/responses (reasoning models' pass-through,
and chat or Anthropic callers routed to such a model). The gateway keeps no state, so
requests say `store: false` and, when reasoning is involved, ask for
`reasoning.encrypted_content` to carry it from one turn to the next.
"""
from __future__ import annotations

from typing import Any

import orjson

from proxy.providers.base import ProviderError
from proxy.providers.common import obj as json_object
from proxy.providers.ir import (
    ChatRequest,
    ChatResponse,
    Finish,
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
    image_url,
)
from proxy.providers.openai import OpenAIAdapter
from proxy.providers.responses.common import (
    FINISH_OF_INCOMPLETE,
    STATUS_OF_ERROR_CODE,
    WIRE,
    dicts,
    reasoning_text,
    usage_from,
)

# A thinking budget (Anthropic's, Gemini's) as the nearest reasoning effort.
_EFFORT_OF_BUDGET = ((2048, "low"), (16384, "medium"))


def _effort(request: ChatRequest) -> str | None:
    if request.reasoning_effort is not None:
        return request.reasoning_effort
    if request.thinking_budget is None:
        return None
    return next((effort for limit, effort in _EFFORT_OF_BUDGET if request.thinking_budget <= limit), "high")


def _user_content(parts: list[Part]) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            content.append({"type": "input_text", "text": part.text})
        elif isinstance(part, Image):
            content.append({"type": "input_image", "image_url": image_url(part), "detail": "auto"})
    return content


def _assistant_items(parts: list[Part]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            if items and items[-1].get("role") == "assistant":
                items[-1]["content"] += part.text
            else:
                items.append({"type": "message", "role": "assistant", "content": part.text})
        elif isinstance(part, ToolCall):
            items.append({"type": "function_call", "call_id": part.id, "name": part.name,
                          "arguments": part.arguments})
        elif isinstance(part, Reasoning) and part.wire == WIRE and part.signature:
            # Only OpenAI's own encrypted reasoning means anything to it; without it (store
            # false) a reasoning item cannot be resolved, so other reasoning is left out.
            items.append({"type": "reasoning", "encrypted_content": part.signature,
                          "summary": [{"type": "summary_text", "text": part.text}] if part.text else []})
    return items


def encode_request(request: ChatRequest, *, model: str, max_tokens: int | None = None,
                   stream: bool) -> dict[str, Any]:
    """A Responses body; `max_tokens` is the route's default when the request names none."""
    if request.stop:
        raise TranslationError("Stop sequences cannot be sent to an OpenAI Responses model (the API has none).",
                               param="stop")
    if request.n != 1:
        raise TranslationError("Several answers (n) cannot be asked of an OpenAI Responses model.", param="n")
    items: list[dict[str, Any]] = []
    carries_reasoning = False
    for message in request.messages:
        if message.role == "user":
            items.append({"type": "message", "role": "user", "content": _user_content(message.parts)})
        elif message.role == "system":
            text = "\n".join(p.text for p in message.parts if isinstance(p, Text))
            items.append({"type": "message", "role": "developer", "content": text})
        elif message.role == "assistant":
            encoded = _assistant_items(message.parts)
            carries_reasoning = carries_reasoning or any(i["type"] == "reasoning" for i in encoded)
            items.extend(encoded)
        else:
            items.extend({"type": "function_call_output", "call_id": p.tool_call_id, "output": p.content}
                         for p in message.parts if isinstance(p, ToolResult))
    payload: dict[str, Any] = {"model": model, "input": items, "store": False}
    if request.system:
        payload["instructions"] = "\n\n".join(request.system)
    if request.tools:
        # strict stays off: schemas from other formats rarely meet strict mode's rules.
        payload["tools"] = [{"type": "function", "name": t.name,
                             **({"description": t.description} if t.description is not None else {}),
                             "parameters": t.parameters if t.parameters is not None else {"type": "object",
                                                                                         "properties": {}},
                             "strict": False} for t in request.tools]
    if request.tool_choice is not None:
        choice = request.tool_choice
        payload["tool_choice"] = {"type": "function", "name": choice.name} if choice.mode == "tool" else choice.mode
    if request.parallel_tool_calls is not None:
        payload["parallel_tool_calls"] = request.parallel_tool_calls
    limit = request.max_tokens if request.max_tokens is not None else max_tokens
    if limit is not None:
        payload["max_output_tokens"] = limit
    for name in ("temperature", "top_p", "user"):
        value = getattr(request, name)
        if value is not None:
            payload[name] = value
    effort = _effort(request)
    if effort is not None:
        payload["reasoning"] = {"effort": effort}
    if effort is not None or carries_reasoning:
        payload["include"] = ["reasoning.encrypted_content"]
    if request.response_format is not None:
        form = request.response_format
        payload["text"] = {"format": {"type": "json_object"} if form.get("type") == "json_object" else {
            "type": "json_schema", "name": form.get("name") or "response", "schema": form.get("schema") or {},
            "strict": bool(form.get("strict"))}}
    if stream:
        payload["stream"] = True
    return payload


def _part_of(item: dict[str, Any]) -> list[Part]:
    kind = item.get("type")
    if kind == "message":
        return [Text(str((c.get("text") if c.get("type") == "output_text" else c.get("refusal")) or ""))
                for c in dicts(item.get("content"))]
    if kind == "function_call":
        return [ToolCall(str(item.get("call_id") or item.get("id") or ""), str(item.get("name") or ""),
                         str(item.get("arguments") or ""))]
    if kind == "custom_tool_call":
        return [ToolCall(str(item.get("call_id") or ""), str(item.get("name") or ""),
                         orjson.dumps({"input": str(item.get("input") or "")}).decode())]
    if kind == "reasoning":
        encrypted = item.get("encrypted_content")
        return [Reasoning(reasoning_text(item), encrypted if isinstance(encrypted, str) else None, wire=WIRE)]
    return []  # the calls of OpenAI's own tools: the gateway never offers them


def _finish(status: Any, details: Any, has_calls: bool) -> Finish:
    if status == "incomplete":
        reason = details.get("reason") if isinstance(details, dict) else None
        return FINISH_OF_INCOMPLETE.get(str(reason), "max_tokens")
    return "tool_use" if has_calls else "end"


def _error_status(error: Any) -> int:
    code = error.get("code") if isinstance(error, dict) else None
    return STATUS_OF_ERROR_CODE.get(str(code), 500)


def _error_message(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or "error")


def decode_response(data: dict[str, Any]) -> ChatResponse:
    if data.get("status") == "failed":
        status = _error_status(data.get("error"))
        raise ProviderError(f"The provider failed the response: {_error_message(data.get('error'))}",
                            error_class=f"upstream_{status}", retryable=status >= 500 or status == 429,
                            status=status)
    parts = [part for item in dicts(data.get("output")) for part in _part_of(item)]
    return ChatResponse(
        id=str(data.get("id") or ""), model=str(data.get("model") or ""), parts=parts,
        finish=_finish(data.get("status"), data.get("incomplete_details"),
                       any(isinstance(p, ToolCall) for p in parts)),
        usage=usage_from(data.get("usage")) or Usage(),
    )


class StreamDecoder:
    """Responses SSE events in, internal stream events out."""

    def __init__(self) -> None:
        self.started = False
        self.calls: dict[str, int] = {}  # function_call item id -> the call's index
        self.with_deltas: set[str] = set()

    def _call_start(self, item: dict[str, Any]) -> list[StreamEvent]:
        ident = str(item.get("id") or item.get("call_id") or "")
        if ident in self.calls:
            return []
        self.calls[ident] = len(self.calls)
        return [ToolCallStart(self.calls[ident], str(item.get("call_id") or ident), str(item.get("name") or ""))]

    def feed(self, event: str | None, data: bytes) -> list[StreamEvent]:
        obj = orjson.loads(data)
        if not isinstance(obj, dict):
            return []
        kind = obj.get("type") or event
        out: list[StreamEvent] = []
        if not self.started and kind != "error":
            self.started = True
            response = json_object(obj.get("response"))
            out.append(StreamStart(str(response.get("id") or ""), str(response.get("model") or "")))
        if kind in ("response.output_text.delta", "response.refusal.delta"):
            if obj.get("delta"):
                out.append(TextDelta(str(obj["delta"])))
        elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            if obj.get("delta"):
                out.append(ReasoningDelta(text=str(obj["delta"])))
        elif kind == "response.function_call_arguments.delta":
            index = self.calls.get(str(obj.get("item_id")))
            if index is not None and obj.get("delta"):
                self.with_deltas.add(str(obj.get("item_id")))
                out.append(ToolCallDelta(index, str(obj["delta"])))
        elif kind in ("response.output_item.added", "response.output_item.done"):
            out.extend(self._item(obj.get("item"), done=kind.endswith("done")))
        elif kind in ("response.completed", "response.incomplete"):
            response = json_object(obj.get("response"))
            out.append(StreamFinish(_finish(response.get("status"), response.get("incomplete_details"),
                                            bool(self.calls))))
            usage = usage_from(response.get("usage"))
            if usage is not None:
                out.append(StreamUsage(usage.input_tokens, usage.output_tokens,
                                       cache_read_tokens=usage.cache_read_tokens,
                                       cache_write_tokens=usage.cache_write_tokens,
                                       reasoning_tokens=usage.reasoning_tokens))
        elif kind == "response.failed":
            error = (obj.get("response") or {}).get("error") if isinstance(obj.get("response"), dict) else None
            out.append(StreamError(_error_message(error), _error_status(error)))
        elif kind == "error":
            out.append(StreamError(_error_message(obj), _error_status(obj)))
        return out

    def _item(self, item: Any, *, done: bool) -> list[StreamEvent]:
        if not isinstance(item, dict):
            return []
        kind = item.get("type")
        if kind == "function_call":
            out = self._call_start(item)
            ident = str(item.get("id") or item.get("call_id") or "")
            if done and ident not in self.with_deltas and item.get("arguments"):
                # Arguments that came whole, with no deltas before them.
                self.with_deltas.add(ident)
                out.append(ToolCallDelta(self.calls[ident], str(item["arguments"])))
            return out
        if kind == "reasoning" and done and isinstance(item.get("encrypted_content"), str):
            return [ReasoningDelta(signature=item["encrypted_content"])]
        return []

    def close(self) -> list[StreamEvent]:
        return []


def stream_usage(event: bytes) -> Usage | None:
    """Usage off a passed-through `response.completed` / `.incomplete` / `.failed` event; cheap otherwise."""
    if b'"usage"' not in event or not (b"response.completed" in event or b"response.incomplete" in event
                                        or b"response.failed" in event):
        return None
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                obj = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return None
            response = obj.get("response") if isinstance(obj, dict) else None
            return usage_from(response.get("usage")) if isinstance(response, dict) else None
    return None


class OpenAIResponsesAdapter(OpenAIAdapter):
    """An OpenAI provider reached through /v1/responses (not in the registry yet: the pipeline
    decides which models go this way)."""

    wire_format = WIRE

    def chat_url(self, *, upstream_model: str, stream: bool) -> str:
        return f"{self.provider.base_url}/responses"

    def encode_request(self, request: ChatRequest, *, upstream_model: str, default_max_tokens: int,
                       stream: bool) -> dict[str, Any]:
        return encode_request(request, model=upstream_model, stream=stream)

    def decode_response(self, data: dict[str, Any]) -> ChatResponse:
        return decode_response(data)

    def stream_decoder(self) -> StreamDecoder:  # type: ignore[override]
        return StreamDecoder()
