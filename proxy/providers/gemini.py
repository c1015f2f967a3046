"""Google Gemini generateContent wire format (provider side only: no client speaks Gemini to us)."""
from __future__ import annotations

import mimetypes
import secrets
from typing import Any

import orjson

from proxy.providers.base import ProviderAdapter
from proxy.providers.ir import (
    ChatRequest,
    ChatResponse,
    Finish,
    Image,
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
    ToolResult,
    Usage,
    parse_data_url,
)

_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                       "LANGUAGE"})
# JSON-schema keywords Gemini's schema subset rejects.
_UNSUPPORTED_SCHEMA_KEYS = frozenset({"$schema", "$id", "$ref", "$defs", "definitions", "additionalProperties",
                                      "strict", "examples", "default", "const"})
_STATUS_OF = {"RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "INTERNAL": 500, "DEADLINE_EXCEEDED": 504}


def _finish(reason: str | None, has_calls: bool) -> Finish:
    if reason == "MAX_TOKENS":
        return "max_tokens"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_use" if has_calls else "end"


def clean_schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: clean_schema(v) for k, v in schema.items() if k not in _UNSUPPORTED_SCHEMA_KEYS}
    if isinstance(schema, list):
        return [clean_schema(v) for v in schema]
    return schema


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _image_part(image: Image) -> dict[str, Any]:
    if image.url is not None:
        inline = parse_data_url(image.url)
        if inline is None:
            mime = mimetypes.guess_type(image.url)[0] or "image/jpeg"
            return {"fileData": {"mimeType": mime, "fileUri": image.url}}
        return {"inlineData": {"mimeType": inline[0], "data": inline[1]}}
    return {"inlineData": {"mimeType": image.media_type or "image/png", "data": image.data or ""}}


def _tool_response(result: ToolResult) -> dict[str, Any]:
    try:
        value = orjson.loads(result.content)
    except orjson.JSONDecodeError:
        value = None
    response = value if isinstance(value, dict) else {"content": result.content}
    return {"functionResponse": {"name": result.name or "tool", "response": response}}


def encode_request(request: ChatRequest) -> dict[str, Any]:
    contents: list[dict[str, Any]] = []
    for message in request.messages:
        role = "model" if message.role == "assistant" else "user"
        parts: list[dict[str, Any]] = []
        for part in message.parts:
            if isinstance(part, Text):
                parts.append({"text": part.text})
            elif isinstance(part, Image):
                parts.append(_image_part(part))
            elif isinstance(part, ToolCall):
                parts.append({"functionCall": {"name": part.name, "args": _arguments(part.arguments)}})
            elif isinstance(part, ToolResult):
                parts.append(_tool_response(part))
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    payload: dict[str, Any] = {"contents": contents}
    if request.system:
        payload["systemInstruction"] = {"parts": [{"text": text} for text in request.system]}
    if request.tools:
        declarations = []
        for tool in request.tools:
            declaration: dict[str, Any] = {"name": tool.name}
            if tool.description is not None:
                declaration["description"] = tool.description
            # Gemini rejects an object schema without properties: leave such parameters out.
            if tool.parameters and tool.parameters.get("properties"):
                declaration["parameters"] = clean_schema(tool.parameters)
            declarations.append(declaration)
        payload["tools"] = [{"functionDeclarations": declarations}]
    if request.tool_choice is not None and request.tools:
        mode = request.tool_choice.mode
        config: dict[str, Any] = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}[mode]}
        if mode == "tool":
            config["allowedFunctionNames"] = [request.tool_choice.name]
        payload["toolConfig"] = {"functionCallingConfig": config}
    generation: dict[str, Any] = {}
    if request.max_tokens is not None:
        generation["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        generation["temperature"] = request.temperature
    if request.top_p is not None:
        generation["topP"] = request.top_p
    if request.stop:
        generation["stopSequences"] = request.stop
    if generation:
        payload["generationConfig"] = generation
    return payload


def _call_id(call: dict[str, Any]) -> str:
    # Gemini's calls often have no id; the caller's format needs one to match the result to.
    return str(call.get("id") or f"call_{secrets.token_hex(12)}")


def _usage(metadata: Any) -> Usage | None:
    if not isinstance(metadata, dict):
        return None
    output = metadata.get("candidatesTokenCount")
    thoughts = metadata.get("thoughtsTokenCount")
    if isinstance(thoughts, int):
        output = (output or 0) + thoughts  # thinking tokens are billed as output
    return Usage(metadata.get("promptTokenCount"), output)


def decode_response(data: dict[str, Any], *, model: str = "") -> ChatResponse:
    candidates = data.get("candidates") or [{}]
    candidate = candidates[0] or {}
    parts: list[Part] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if part.get("thought"):
            continue
        if "text" in part:
            parts.append(Text(str(part["text"])))
        elif isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            parts.append(ToolCall(_call_id(call), str(call.get("name") or ""),
                                  orjson.dumps(call.get("args") or {}).decode()))
    reason = candidate.get("finishReason")
    if not data.get("candidates") and (data.get("promptFeedback") or {}).get("blockReason"):
        reason = "SAFETY"
    return ChatResponse(
        id=str(data.get("responseId") or f"gen-{secrets.token_hex(8)}"),
        model=str(data.get("modelVersion") or model), parts=parts,
        finish=_finish(reason, any(isinstance(p, ToolCall) for p in parts)),
        usage=_usage(data.get("usageMetadata")) or Usage(),
    )


class StreamDecoder:
    """Gemini's SSE events (each a whole GenerateContentResponse) in, internal stream events out.

    Gemini marks the last event with finishReason and the cumulative usage; the
    finish is given out when the stream ends, with the latest usage seen.
    """

    def __init__(self, *, model: str = "") -> None:
        self.model = model
        self.started = False
        self.calls = 0
        self.reason: str | None = None
        self.usage: Usage | None = None

    def feed(self, event: str | None, data: bytes) -> list[StreamEvent]:
        obj = orjson.loads(data)
        if not isinstance(obj, dict):
            return []
        if isinstance(obj.get("error"), dict):
            error = obj["error"]
            return [StreamError(str(error.get("message") or "error"),
                                error.get("code") if isinstance(error.get("code"), int)
                                else _STATUS_OF.get(str(error.get("status"))))]
        out: list[StreamEvent] = []
        if not self.started:
            self.started = True
            out.append(StreamStart(str(obj.get("responseId") or f"gen-{secrets.token_hex(8)}"),
                                   str(obj.get("modelVersion") or self.model)))
        candidate = (obj.get("candidates") or [{}])[0] or {}
        for part in (candidate.get("content") or {}).get("parts") or []:
            if part.get("thought"):
                continue
            if part.get("text"):
                out.append(TextDelta(str(part["text"])))
            elif isinstance(part.get("functionCall"), dict):
                call = part["functionCall"]
                out.append(ToolCallStart(self.calls, _call_id(call), str(call.get("name") or "")))
                out.append(ToolCallDelta(self.calls, orjson.dumps(call.get("args") or {}).decode()))
                self.calls += 1
        if candidate.get("finishReason"):
            self.reason = candidate["finishReason"]
        usage = _usage(obj.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        return out

    def close(self) -> list[StreamEvent]:
        if not self.started:
            return []
        out: list[StreamEvent] = [StreamFinish(_finish(self.reason, self.calls > 0))]
        if self.usage is not None:
            out.append(StreamUsage(self.usage.input_tokens, self.usage.output_tokens))
        return out


class GeminiAdapter(ProviderAdapter):
    wire_format = "gemini"

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.provider.credential} if self.provider.credential else {}

    def chat_url(self, *, upstream_model: str, stream: bool) -> str:
        # base_url as Google's REST docs give it: https://generativelanguage.googleapis.com/v1beta
        if stream:
            return f"{self.provider.base_url}/models/{upstream_model}:streamGenerateContent?alt=sse"
        return f"{self.provider.base_url}/models/{upstream_model}:generateContent"

    def health_url(self) -> str:
        return f"{self.provider.base_url}/models"

    def encode_request(self, request: ChatRequest, *, upstream_model: str, default_max_tokens: int,
                       stream: bool) -> dict[str, Any]:
        return encode_request(request)

    def decode_response(self, data: dict[str, Any]) -> ChatResponse:
        return decode_response(data)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder()
