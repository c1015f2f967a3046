"""Google Gemini generateContent wire format: the provider side.

The caller side (Gemini CLI and the google-genai SDK calling us) is in
proxy.providers.gemini_caller.
"""
from __future__ import annotations

import mimetypes
import re
import secrets
from typing import Any

import orjson

from proxy.providers.base import ProviderAdapter
from proxy.providers.common import EFFORT_BUDGETS, arguments, system_note
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
    Usage,
    parse_data_url,
)

_FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                       "LANGUAGE"})
# JSON-schema keywords Gemini's schema subset rejects.
_UNSUPPORTED_SCHEMA_KEYS = frozenset({"$schema", "$id", "$ref", "$defs", "definitions", "additionalProperties",
                                      "strict", "examples", "default", "const"})
_STATUS_OF = {"RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "INTERNAL": 500, "DEADLINE_EXCEEDED": 504}
# Gemini 3 refuses a replayed function call without the thought signature it came with; calls
# from another format's history have none, and Google documents this value for them.
SKIP_SIGNATURE = "skip_thought_signature_validator"
# A base URL that ends in an API version (/v1beta, /v1, /v1alpha): as Google's REST docs write it.
_VERSIONED = re.compile(r"/v\d+(?:alpha|beta)?\d*$")
_OLD_GEMINI = re.compile(r"^(?:models/)?gemini-(?:1|2)[.-]")
_GEMINI = re.compile(r"^(?:models/)?gemini-")


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


def _parts(message_role: str, parts: list[Part]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    signature: str | None = None  # a Gemini signature that belongs on the next part
    for part in parts:
        encoded: dict[str, Any] | None = None
        if isinstance(part, Reasoning):
            if part.wire != "gemini":
                continue  # another provider's reasoning means nothing to Gemini
            if part.text:
                encoded = {"text": part.text, "thought": True}
                if part.signature:
                    encoded["thoughtSignature"] = part.signature
            else:
                signature = part.signature
                continue
        elif isinstance(part, Text):
            encoded = {"text": system_note(part.text) if message_role == "system" else part.text}
        elif isinstance(part, Image):
            encoded = _image_part(part)
        elif isinstance(part, ToolCall):
            encoded = {"functionCall": {"name": part.name, "args": arguments(part.arguments)}}
        elif isinstance(part, ToolResult):
            encoded = _tool_response(part)
        if encoded is None:
            continue
        if signature:
            encoded["thoughtSignature"], signature = signature, None
        out.append(encoded)
    return out


def _thinking_config(request: ChatRequest, model: str) -> dict[str, Any] | None:
    """thinkingBudget or thinkingLevel, never both (Gemini refuses the pair).

    A budget goes as thinkingBudget (Gemini 3 still takes it); an effort as thinkingLevel on
    Gemini 3 and later, as a budget on 2.x, which knows no levels. Pro models take only LOW
    and HIGH.
    """
    if request.thinking_budget is not None:
        return {"thinkingBudget": request.thinking_budget}
    effort = request.reasoning_effort
    if effort is None:
        return None
    if _OLD_GEMINI.match(model):
        return {"thinkingBudget": EFFORT_BUDGETS[effort]}
    if "pro" in model:
        return {"thinkingLevel": "LOW" if effort in ("minimal", "low") else "HIGH"}
    return {"thinkingLevel": effort.upper()}


def encode_request(request: ChatRequest, *, model: str = "") -> dict[str, Any]:
    """The internal representation as a generateContent body for `model` (the URL names it).

    A system message inside the conversation becomes a user turn whose text starts with
    "[system] " (Gemini has one systemInstruction, at the start).
    """
    contents: list[dict[str, Any]] = []
    for message in request.messages:
        role = "model" if message.role == "assistant" else "user"
        parts = _parts(message.role, message.parts)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if _GEMINI.match(model) and not _OLD_GEMINI.match(model):
        for content in contents:
            calls = [p for p in content["parts"] if "functionCall" in p]
            if content["role"] == "model" and calls and not any("thoughtSignature" in p for p in calls):
                calls[0]["thoughtSignature"] = SKIP_SIGNATURE  # the first call of a step carries it
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
    if request.n > 1:
        generation["candidateCount"] = request.n
    if request.response_format is not None:
        generation["responseMimeType"] = "application/json"
        schema = request.response_format.get("schema")
        if request.response_format.get("type") == "json_schema" and isinstance(schema, dict):
            generation["responseSchema"] = clean_schema(schema)
    thinking = _thinking_config(request, model.lower())
    if thinking is not None:
        generation["thinkingConfig"] = thinking
    if generation:
        payload["generationConfig"] = generation
    return payload


def _call_id(call: dict[str, Any]) -> str:
    # Gemini's calls often have no id; the caller's format needs one to match the result to.
    return str(call.get("id") or f"call_{secrets.token_hex(12)}")


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_from_gemini(metadata: Any) -> Usage | None:
    """usageMetadata in the IR's convention (None when absent).

    promptTokenCount already counts the cached content; candidatesTokenCount leaves out the
    thoughts, which are billed as output, so output = candidates + thoughts.
    """
    if not isinstance(metadata, dict):
        return None
    prompt, tool_prompt = _count(metadata.get("promptTokenCount")), _count(metadata.get("toolUsePromptTokenCount"))
    output, thoughts = _count(metadata.get("candidatesTokenCount")), _count(metadata.get("thoughtsTokenCount"))
    if prompt is not None and tool_prompt:
        prompt += tool_prompt
    if thoughts:
        output = (output or 0) + thoughts
    return Usage(prompt, output, cache_read_tokens=_count(metadata.get("cachedContentTokenCount")) or 0,
                 reasoning_tokens=thoughts or 0)


def _stream_usage(usage: Usage) -> StreamUsage:
    return StreamUsage(usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                       reasoning_tokens=usage.reasoning_tokens)


def stream_usage(event: bytes) -> StreamUsage | None:
    """The usage of a passed-through Gemini SSE event (the pipeline keeps the last one seen)."""
    if b"usageMetadata" not in event:
        return None
    for line in event.splitlines():
        if line.startswith(b"data:"):
            try:
                obj = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return None
            usage = usage_from_gemini(obj.get("usageMetadata")) if isinstance(obj, dict) else None
            return None if usage is None else _stream_usage(usage)
    return None


def _response_parts(part: dict[str, Any]) -> list[Part]:
    """One Gemini part as IR parts: a thought, or text / a call with its thought signature first."""
    signature = part.get("thoughtSignature") if isinstance(part.get("thoughtSignature"), str) else None
    if part.get("thought"):
        return [Reasoning(str(part.get("text") or ""), signature, wire="gemini")]
    out: list[Part] = [Reasoning("", signature, wire="gemini")] if signature else []
    if isinstance(part.get("text"), str) and part["text"]:
        out.append(Text(part["text"]))
    elif isinstance(part.get("functionCall"), dict):
        call = part["functionCall"]
        out.append(ToolCall(_call_id(call), str(call.get("name") or ""),
                            orjson.dumps(call.get("args") or {}).decode()))
    return out


def decode_response(data: dict[str, Any], *, model: str = "") -> ChatResponse:
    candidates = data.get("candidates") or [{}]
    candidate = candidates[0] or {}
    parts: list[Part] = []
    for part in (candidate.get("content") or {}).get("parts") or []:
        if isinstance(part, dict):
            parts.extend(_response_parts(part))
    reason = candidate.get("finishReason")
    if not data.get("candidates") and (data.get("promptFeedback") or {}).get("blockReason"):
        reason = "SAFETY"
    return ChatResponse(
        id=str(data.get("responseId") or f"gen-{secrets.token_hex(8)}"),
        model=str(data.get("modelVersion") or model), parts=parts,
        finish=_finish(reason, any(isinstance(p, ToolCall) for p in parts)),
        usage=usage_from_gemini(data.get("usageMetadata")) or Usage(),
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
            if not isinstance(part, dict):
                continue
            for decoded in _response_parts(part):
                if isinstance(decoded, Reasoning):
                    out.append(ReasoningDelta(decoded.text, decoded.signature, wire="gemini"))
                elif isinstance(decoded, Text):
                    out.append(TextDelta(decoded.text))
                elif isinstance(decoded, ToolCall):
                    out.append(ToolCallStart(self.calls, decoded.id, decoded.name))
                    out.append(ToolCallDelta(self.calls, decoded.arguments))
                    self.calls += 1
        if candidate.get("finishReason"):
            self.reason = candidate["finishReason"]
        usage = usage_from_gemini(obj.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        return out

    def close(self) -> list[StreamEvent]:
        if not self.started:
            return []
        out: list[StreamEvent] = [StreamFinish(_finish(self.reason, self.calls > 0))]
        if self.usage is not None:
            out.append(_stream_usage(self.usage))
        return out


class GeminiAdapter(ProviderAdapter):
    wire_format = "gemini"

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.provider.credential} if self.provider.credential else {}

    def api_base(self) -> str:
        """base_url as Google's REST docs give it (https://generativelanguage.googleapis.com/v1beta), or as
        the google-genai SDK takes it (the host alone), which gets /v1beta."""
        base = self.provider.base_url
        return base if _VERSIONED.search(base) else f"{base}/v1beta"

    def model_url(self, upstream_model: str, method: str) -> str:
        return f"{self.api_base()}/models/{upstream_model}:{method}"

    def chat_url(self, *, upstream_model: str, stream: bool) -> str:
        if stream:
            return self.model_url(upstream_model, "streamGenerateContent") + "?alt=sse"
        return self.model_url(upstream_model, "generateContent")

    def health_url(self) -> str:
        return f"{self.api_base()}/models"

    def encode_request(self, request: ChatRequest, *, upstream_model: str, default_max_tokens: int,
                       stream: bool) -> dict[str, Any]:
        return encode_request(request, model=upstream_model)

    def decode_response(self, data: dict[str, Any]) -> ChatResponse:
        return decode_response(data)

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder()
