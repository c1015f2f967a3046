"""OpenAI Chat Completions wire format: the caller side (our /v1/chat/completions) and the provider side."""
from __future__ import annotations

import time
from typing import Any, ClassVar

import orjson

from proxy.providers.base import ProviderAdapter
from proxy.providers.common import effort_for_budget, obj, openai_reasoning_model
from proxy.providers.ir import (
    ChatRequest,
    ChatResponse,
    Effort,
    Finish,
    Image,
    Message,
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
    ToolChoice,
    ToolDef,
    ToolResult,
    TranslationError,
    Usage,
    fill_tool_result_names,
    image_url,
    parse_data_url,
)

FINISH_TO_OPENAI: dict[str, str] = {
    "end": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
    "content_filter": "content_filter",
}
FINISH_FROM_OPENAI: dict[str, Finish] = {
    "stop": "end", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
    "content_filter": "content_filter",
}
EFFORTS: dict[str, Effort] = {"minimal": "minimal", "low": "low", "medium": "medium", "high": "high",
                              "xhigh": "high", "none": "minimal"}


# --- Caller side: an OpenAI body in, an OpenAI answer out ---------------------------------


def _texts(content: Any, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    texts = []
    for index, part in enumerate(content):
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise TranslationError(f"'{where}[{index}]' of type {kind!r} can only be text here.",
                                   param=f"{where}[{index}]")
    return texts


def _user_parts(content: Any, where: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)]
    parts: list[Part] = []
    for index, part in enumerate(content or []):
        kind = part.get("type")
        if kind == "text":
            parts.append(Text(str(part.get("text", ""))))
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url") if isinstance(part.get("image_url"), dict) else None
            if not isinstance(url, str):
                raise TranslationError(f"'{where}[{index}].image_url.url' must be a string.",
                                       param=f"{where}[{index}]")
            inline = parse_data_url(url)
            parts.append(Image(media_type=inline[0], data=inline[1]) if inline else Image(url=url))
        else:
            raise TranslationError(
                f"Content parts of type {kind!r} ('{where}[{index}]') cannot be sent to this provider.",
                param=f"{where}[{index}]")
    return parts


def decode_request(body: dict[str, Any]) -> ChatRequest:
    """An OpenAI chat body (already validated by proxy.parsing) as the internal representation."""
    system: list[str] = []
    messages: list[Message] = []
    for index, raw in enumerate(body["messages"]):
        role, content, where = raw.get("role"), raw.get("content"), f"messages[{index}].content"
        if role in ("system", "developer"):
            text = "\n".join(_texts(content, where))
            if messages:
                messages.append(Message("system", [Text(text)]))  # in place, where the caller put it
            else:
                system.append(text)
        elif role == "user":
            messages.append(Message("user", _user_parts(content, where)))
        elif role == "assistant":
            parts: list[Part] = [Text(t) for t in _texts(content, where) if t]
            for call in raw.get("tool_calls") or []:
                function = call.get("function") or {}
                parts.append(ToolCall(str(call.get("id") or ""), str(function.get("name") or ""),
                                      str(function.get("arguments") or "")))
            messages.append(Message("assistant", parts))
        else:  # tool, or the legacy function role
            call_id = raw.get("tool_call_id") if role == "tool" else raw.get("name")
            name = raw.get("name") if role == "function" else None
            result = ToolResult(str(call_id or ""), "\n".join(_texts(content, where)), name)
            if messages and messages[-1].role == "tool":
                messages[-1].parts.append(result)
            else:
                messages.append(Message("tool", [result]))
    fill_tool_result_names(messages)
    tools = [
        ToolDef(t["function"]["name"], t["function"].get("description"), t["function"].get("parameters"))
        for t in body.get("tools") or []
    ]
    choice = body.get("tool_choice")
    tool_choice = None
    if isinstance(choice, str) and choice in ("auto", "none", "required"):
        tool_choice = ToolChoice(choice)  # type: ignore[arg-type]
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        tool_choice = ToolChoice("tool", name) if isinstance(name, str) else None
    stop = body.get("stop")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    user = body.get("user")
    effort = body.get("reasoning_effort")
    return ChatRequest(
        messages=messages, system=system, tools=tools, tool_choice=tool_choice,
        parallel_tool_calls=body.get("parallel_tool_calls") if isinstance(body.get("parallel_tool_calls"), bool)
        else None,
        max_tokens=max_tokens, temperature=body.get("temperature"), top_p=body.get("top_p"),
        stop=[stop] if isinstance(stop, str) else list(stop or []),
        stream=bool(body.get("stream")), user=user if isinstance(user, str) else None,
        include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
        n=body.get("n") or 1, reasoning_effort=EFFORTS.get(effort) if isinstance(effort, str) else None,
        response_format=_decode_response_format(body.get("response_format")),
    )


def _decode_response_format(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None
    if value.get("type") == "json_object":
        return {"type": "json_object"}
    spec = value.get("json_schema")
    if value.get("type") == "json_schema" and isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
        return {"type": "json_schema", "name": str(spec.get("name") or "response"), "schema": spec["schema"],
                "strict": bool(spec.get("strict"))}
    return None  # "text": the default


def _message(parts: list[Part]) -> dict[str, Any]:
    text = "".join(p.text for p in parts if isinstance(p, Text))
    calls = [p for p in parts if isinstance(p, ToolCall)]
    message: dict[str, Any] = {"role": "assistant", "content": text if (text or not calls) else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
    return message


def _usage(usage: Usage) -> dict[str, Any]:
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


def usage_from_openai(usage: Any) -> Usage:
    """OpenAI's usage object (chat completions) in the IR's convention, which is OpenAI's own."""
    if not isinstance(usage, dict):
        return Usage()
    prompt = obj(usage.get("prompt_tokens_details"))
    completion = obj(usage.get("completion_tokens_details"))
    return Usage(
        input_tokens=_count(usage.get("prompt_tokens")), output_tokens=_count(usage.get("completion_tokens")),
        cache_read_tokens=_count(prompt.get("cached_tokens")) or 0,
        reasoning_tokens=_count(completion.get("reasoning_tokens")) or 0,
    )


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def encode_response(response: ChatResponse) -> dict[str, Any]:
    return {
        "id": response.id, "object": "chat.completion", "created": int(time.time()), "model": response.model,
        "choices": [{"index": 0, "message": _message(response.parts), "logprobs": None,
                     "finish_reason": FINISH_TO_OPENAI[response.finish]}],
        "usage": _usage(response.usage),
    }


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "invalid_request_error", 429: "rate_limit_error"}.get(status, "upstream_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"


class StreamEncoder:
    """Internal stream events in, OpenAI `chat.completion.chunk` SSE out, one event at a time."""

    terminal = b"data: [DONE]\n\n"

    def __init__(self, *, include_usage: bool) -> None:
        self.include_usage = include_usage
        self.base: dict[str, Any] | None = None
        self.usage = Usage()
        self.finished = False

    def _start(self, ident: str = "", model: str = "") -> bytes:
        self.base = {"id": ident or "chatcmpl-tollgate", "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model}
        return _chunk(self.base, {"role": "assistant", "content": ""})

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamStart):
            if self.base is None:
                return self._start(event.id, event.model)
            return b""
        head = self._start() if self.base is None else b""
        assert self.base is not None
        if isinstance(event, TextDelta):
            return head + _chunk(self.base, {"content": event.text})
        if isinstance(event, ToolCallStart):
            return head + _chunk(self.base, {"tool_calls": [{
                "index": event.index, "id": event.id, "type": "function",
                "function": {"name": event.name, "arguments": ""}}]})
        if isinstance(event, ToolCallDelta):
            return head + _chunk(self.base, {"tool_calls": [{"index": event.index,
                                                             "function": {"arguments": event.arguments}}]})
        if isinstance(event, StreamFinish):
            self.finished = True
            return head + _chunk(self.base, {}, FINISH_TO_OPENAI[event.finish])
        if isinstance(event, StreamUsage):
            if event.input_tokens is not None:
                self.usage.input_tokens = event.input_tokens
            if event.output_tokens is not None:
                self.usage.output_tokens = event.output_tokens
            self.usage.cache_read_tokens = event.cache_read_tokens or self.usage.cache_read_tokens
            self.usage.cache_write_tokens = event.cache_write_tokens or self.usage.cache_write_tokens
            self.usage.reasoning_tokens = event.reasoning_tokens or self.usage.reasoning_tokens
        return head  # ReasoningDelta too: Chat Completions has no field for reasoning

    def tail(self) -> bytes:
        """What goes out after the provider's last event and before the terminal one."""
        out = b"" if self.base is not None else self._start()
        assert self.base is not None
        if not self.finished:
            out += _chunk(self.base, {}, "stop")
        if self.include_usage:
            out += b"data: " + orjson.dumps({**self.base, "choices": [], "usage": _usage(self.usage)}) + b"\n\n"
        return out

    @staticmethod
    def error_event(message: str, code: str) -> bytes:
        payload = {"error": {"message": message, "type": "upstream_error", "param": None, "code": code}}
        return b"data: " + orjson.dumps(payload) + b"\n\n"


# --- Provider side: the internal representation out, an OpenAI answer in ------------------


def _user_content(parts: list[Part]) -> str | list[dict[str, Any]]:
    if len(parts) == 1 and isinstance(parts[0], Text):
        return parts[0].text
    content: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            content.append({"type": "image_url", "image_url": {"url": image_url(part)}})
    return content


def encode_request(request: ChatRequest, *, model: str, max_tokens_field: str = "max_completion_tokens",
                   stream: bool) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": text} for text in request.system]
    for message in request.messages:
        if message.role == "system":
            # In place: "system" rather than "developer", which every OpenAI-compatible server knows.
            messages.append({"role": "system", "content": "\n".join(p.text for p in message.parts
                                                                      if isinstance(p, Text))})
        elif message.role == "user":
            messages.append({"role": "user", "content": _user_content(message.parts)})
        elif message.role == "assistant":
            encoded = _message(message.parts)
            encoded.pop("refusal")
            messages.append(encoded)
        else:
            for part in message.parts:
                if isinstance(part, ToolResult):
                    messages.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": part.content})
    payload: dict[str, Any] = {"model": model, "messages": messages}
    if request.tools:
        payload["tools"] = [{"type": "function", "function": {
            "name": t.name,
            **({"description": t.description} if t.description is not None else {}),
            **({"parameters": t.parameters} if t.parameters is not None else {}),
        }} for t in request.tools]
    if request.tool_choice is not None:
        choice = request.tool_choice
        payload["tool_choice"] = ({"type": "function", "function": {"name": choice.name}}
                                  if choice.mode == "tool" else choice.mode)
    if request.parallel_tool_calls is not None:
        payload["parallel_tool_calls"] = request.parallel_tool_calls
    if request.max_tokens is not None:
        payload[max_tokens_field] = request.max_tokens
    for name in ("temperature", "top_p", "user"):
        value = getattr(request, name)
        if value is not None:
            payload[name] = value
    if request.stop:
        payload["stop"] = request.stop
    if request.n > 1:
        payload["n"] = request.n
    if request.response_format is not None:
        payload["response_format"] = _encode_response_format(request.response_format)
    if openai_reasoning_model(model):
        _reasoning_model_fields(request, payload)
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload


def _encode_response_format(value: dict[str, Any]) -> dict[str, Any]:
    if value.get("type") == "json_schema":
        spec = {"name": value.get("name") or "response", "schema": value.get("schema") or {}}
        if value.get("strict"):
            spec["strict"] = True
        return {"type": "json_schema", "json_schema": spec}
    return {"type": "json_object"}


def _reasoning_model_fields(request: ChatRequest, payload: dict[str, Any]) -> None:
    """`reasoning_effort` for the models that take it (others answer 400 to it, so it goes only to
    these), and the sampling fields they refuse (any temperature but 1, top_p) left out."""
    effort = request.reasoning_effort
    if effort is None and request.thinking_budget:
        effort = effort_for_budget(request.thinking_budget)
    if effort is not None:
        payload["reasoning_effort"] = effort
    if payload.get("temperature") not in (None, 1):
        del payload["temperature"]
    payload.pop("top_p", None)


def decode_response(data: dict[str, Any]) -> ChatResponse:
    choices = data.get("choices") or [{}]
    choice = choices[0] or {}
    message = choice.get("message") or {}
    parts: list[Part] = []
    if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
        # Not OpenAI's own field: DeepSeek, vLLM and other compatible servers put reasoning here.
        parts.append(Reasoning(message["reasoning_content"], wire="openai"))
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(_texts(content, "content"))
    if content:
        parts.append(Text(content))
    elif message.get("refusal"):
        parts.append(Text(str(message["refusal"])))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        parts.append(ToolCall(str(call.get("id") or ""), str(function.get("name") or ""),
                              str(function.get("arguments") or "")))
    usage = data.get("usage")
    return ChatResponse(
        id=str(data.get("id") or ""), model=str(data.get("model") or ""), parts=parts,
        finish=FINISH_FROM_OPENAI.get(choice.get("finish_reason") or "stop", "end"),
        usage=usage_from_openai(usage),
    )


class StreamDecoder:
    """OpenAI chunk SSE events in, internal stream events out."""

    def __init__(self) -> None:
        self.started = False
        self.tools_seen: set[int] = set()

    def feed(self, event: str | None, data: bytes) -> list[StreamEvent]:
        if data == b"[DONE]":
            return []
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            return []
        if isinstance(chunk.get("error"), dict):
            error = chunk["error"]
            return [StreamError(str(error.get("message") or "error"), None)]
        out: list[StreamEvent] = []
        if not self.started:
            self.started = True
            out.append(StreamStart(str(chunk.get("id") or ""), str(chunk.get("model") or "")))
        for choice in (chunk.get("choices") or [])[:1]:
            delta = choice.get("delta") or {}
            if isinstance(delta.get("reasoning_content"), str) and delta["reasoning_content"]:
                out.append(ReasoningDelta(delta["reasoning_content"], wire="openai"))
            text = delta.get("content") or delta.get("refusal")
            if text:
                out.append(TextDelta(text))
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                function = call.get("function") or {}
                if index not in self.tools_seen:
                    self.tools_seen.add(index)
                    out.append(ToolCallStart(index, str(call.get("id") or f"call_{index}"),
                                             str(function.get("name") or "")))
                if function.get("arguments"):
                    out.append(ToolCallDelta(index, function["arguments"]))
            if choice.get("finish_reason"):
                out.append(StreamFinish(FINISH_FROM_OPENAI.get(choice["finish_reason"], "end")))
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            decoded = usage_from_openai(usage)
            out.append(StreamUsage(decoded.input_tokens, decoded.output_tokens, decoded.cache_read_tokens,
                                   reasoning_tokens=decoded.reasoning_tokens))
        return out

    def close(self) -> list[StreamEvent]:
        return []


class OpenAIAdapter(ProviderAdapter):
    wire_format = "openai"
    FORWARDED_HEADERS = ("accept-language",)
    max_tokens_field: ClassVar[str] = "max_completion_tokens"

    def auth_headers(self) -> dict[str, str]:
        credential = self.provider.credential
        return {"authorization": f"Bearer {credential}"} if credential else {}

    # OpenAI itself (and the sandbox) also serve the Responses API; OpenAI-compatible servers may not.
    responses_api: ClassVar[bool] = True

    def chat_url(self, *, upstream_model: str, stream: bool) -> str:
        return f"{self.provider.base_url}/chat/completions"

    def takes_as_is(self, wire: str) -> bool:
        return wire == "openai" or (wire == "responses" and self.responses_api)

    def passthrough_url(self, wire: str, *, upstream_model: str, stream: bool) -> str:
        if wire == "responses":
            return f"{self.provider.base_url}/responses"
        return self.chat_url(upstream_model=upstream_model, stream=stream)

    def embeddings_url(self) -> str:
        return f"{self.provider.base_url}/embeddings"

    def health_url(self) -> str:
        return f"{self.provider.base_url}/models"

    def encode_request(self, request: ChatRequest, *, upstream_model: str, default_max_tokens: int,
                       stream: bool) -> dict[str, Any]:
        return encode_request(request, model=upstream_model, max_tokens_field=self.max_tokens_field,
                              stream=stream)

    def decode_response(self, data: dict[str, Any]) -> ChatResponse:
        return decode_response(data)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder()
