"""Gemini generateContent as a caller's format: Gemini CLI and the google-genai SDK calling us.

`POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent` (with `alt=sse`,
as the SDKs and Gemini CLI call it, or without, which Google serves as one JSON array
written out as it grows). The model is in the URL, never in the body. A call to a Gemini
provider passes the body through; a call to another format goes through `decode_request`
here and the answer comes back through `encode_response` or a `StreamEncoder`.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from proxy.providers.common import arguments, json_schema_from_gemini, obj
from proxy.providers.gemini import SKIP_SIGNATURE
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
)

FINISH_TO_GEMINI: dict[str, str] = {
    # Gemini ends a turn that calls functions with STOP too.
    "end": "STOP", "stop_sequence": "STOP", "tool_use": "STOP", "max_tokens": "MAX_TOKENS",
    "content_filter": "SAFETY",
}
# google.rpc status names Google's APIs give with each HTTP status.
STATUS_NAMES: dict[int, str] = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    405: "INVALID_ARGUMENT", 409: "ABORTED",
    # Google has no status of its own for a body over the limit: the request is invalid as sent.
    413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 431: "INVALID_ARGUMENT", 499: "CANCELLED",
    500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
    529: "UNAVAILABLE",
}
EFFORT_FROM_LEVEL: dict[str, Effort] = {"MINIMAL": "minimal", "LOW": "low", "MEDIUM": "medium", "HIGH": "high",
                                        "XHIGH": "high"}
# Keys a Part may carry beside its data that say nothing another provider could use.
_PART_METADATA = frozenset({"thought", "thoughtSignature", "partMetadata", "mediaResolution", "videoMetadata",
                            "callIndex"})


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """Google's error shape, which the google-genai SDK and Gemini CLI read."""
    return {"error": {"code": status, "message": message, "status": status_name(status)}}


# --- The caller's body in -------------------------------------------------------------------


def _where(index: int, number: int) -> str:
    return f"contents[{index}].parts[{number}]"


def _decoded_text(data: str, where: str) -> str:
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise TranslationError(f"'{where}.inlineData.data' is not base64 of UTF-8 text.", param=where) from None


def _inline(blob: Any, where: str) -> Part:
    if not isinstance(blob, dict) or not isinstance(blob.get("data"), str):
        raise TranslationError(f"'{where}.inlineData' must have base64 'data' and a 'mimeType'.", param=where)
    mime = str(blob.get("mimeType") or "")
    if mime.startswith("image/"):
        return Image(media_type=mime, data=blob["data"])
    if mime.startswith("text/"):
        return Text(_decoded_text(blob["data"], where))
    raise TranslationError(f"'{where}.inlineData' of type {mime or 'unknown'!r} can only be sent to a Gemini "
                           "provider; other providers take images and text here.", param=where)


def _file(data: Any, where: str) -> Part:
    uri = data.get("fileUri") if isinstance(data, dict) else None
    mime = str(data.get("mimeType") or "") if isinstance(data, dict) else ""
    if isinstance(uri, str) and uri.startswith(("https://", "http://")) and mime.startswith("image/") and \
            "generativelanguage.googleapis.com" not in uri:
        return Image(url=uri)
    # Files uploaded to Google (the Files API, gs:// buckets) are readable only by Gemini.
    raise TranslationError(f"'{where}.fileData' names a file only a Gemini provider can read; send the content "
                           "inline (inlineData) to use this model.", param=where)


def _result_content(response: Any) -> tuple[str, bool]:
    """A functionResponse's `response` as the text other formats carry, and whether it is an error.

    Gemini CLI answers {"output": "..."} or {"error": "..."}; a lone string is handed on as
    it is, anything else as JSON text.
    """
    if isinstance(response, dict) and len(response) == 1:
        (key, value), = response.items()
        if isinstance(value, str) and key in ("output", "content", "result", "error"):
            return value, key == "error"
    return orjson.dumps(response if response is not None else {}).decode(), False


class _CallIds:
    """Ids for functionCall/functionResponse pairs that have none (Gemini pairs them by name and order)."""

    def __init__(self) -> None:
        self.count = 0
        self.open: dict[str, list[str]] = {}

    def call(self, name: str, ident: Any) -> str:
        if isinstance(ident, str) and ident:
            return ident
        self.count += 1
        ident = f"call_{self.count}_{name}"
        self.open.setdefault(name, []).append(ident)
        return ident

    def response(self, name: str, ident: Any) -> str:
        if isinstance(ident, str) and ident:
            return ident
        waiting = self.open.get(name)
        if waiting:
            return waiting.pop(0)
        self.count += 1
        return f"call_{self.count}_{name}"


def _part(raw: dict[str, Any], role: str, where: str, ids: _CallIds) -> list[tuple[Part, str]]:
    """One Gemini part as IR parts with the role of the message each belongs in."""
    signature = raw.get("thoughtSignature") if isinstance(raw.get("thoughtSignature"), str) else None
    if signature == SKIP_SIGNATURE:
        signature = None  # Gemini CLI's mark on a call that came without one: no reasoning to keep
    if raw.get("thought") is True:
        return [(Reasoning(str(raw.get("text") or ""), signature, wire="gemini"), role)]
    # A signature on a text or call part belongs to Gemini alone: kept just before it.
    out: list[tuple[Part, str]] = [(Reasoning("", signature, wire="gemini"), role)] if signature else []
    data = [key for key in raw if key not in _PART_METADATA]
    kind = data[0] if data else "text"
    if kind == "text":
        if not isinstance(raw.get("text", ""), str):
            raise TranslationError(f"'{where}.text' must be a string.", param=where)
        return [*out, (Text(raw.get("text", "")), role)] if raw.get("text") else out
    if kind == "inlineData":
        return [*out, (_inline(raw["inlineData"], where), role)]
    if kind == "fileData":
        return [*out, (_file(raw["fileData"], where), role)]
    if kind == "functionCall":
        call = raw["functionCall"] if isinstance(raw["functionCall"], dict) else {}
        name = call.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"'{where}.functionCall.name' must be a non-empty string.", param=where)
        call_args = obj(call.get("args"))
        return [*out, (ToolCall(ids.call(name, call.get("id")), name, orjson.dumps(call_args).decode()), role)]
    if kind == "functionResponse":
        result = raw["functionResponse"] if isinstance(raw["functionResponse"], dict) else {}
        name = result.get("name")
        if not isinstance(name, str) or not name:
            raise TranslationError(f"'{where}.functionResponse.name' must be a non-empty string.", param=where)
        content, is_error = _result_content(result.get("response"))
        return [(ToolResult(ids.response(name, result.get("id")), content, name, is_error), "tool")]
    if kind in ("executableCode", "codeExecutionResult"):
        # Gemini's own code execution, as history: only its text means anything elsewhere.
        block = raw[kind] if isinstance(raw[kind], dict) else {}
        text = block.get("code") if kind == "executableCode" else block.get("output")
        return [*out, (Text(text), role)] if isinstance(text, str) and text else out
    raise TranslationError(f"'{where}' is a part of kind {kind!r}, which cannot be sent to this provider.",
                           param=where)


def _system(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    parts = value.get("parts") if isinstance(value, dict) else None
    if not isinstance(parts, list):
        raise TranslationError("'systemInstruction' must be a Content object with text parts.",
                               param="systemInstruction")
    texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return ["\n".join(texts)] if texts else []


def _tools(value: Any) -> list[ToolDef]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TranslationError("'tools' must be an array of Tool objects.", param="tools")
    tools = []
    for index, tool in enumerate(value):
        declarations = tool.get("functionDeclarations") if isinstance(tool, dict) else None
        # Google's own tools (googleSearch, codeExecution, urlContext, fileSearch...) run at Google:
        # left out, so a client that always declares one still works with its functions elsewhere.
        for number, declaration in enumerate(declarations if isinstance(declarations, list) else []):
            where = f"tools[{index}].functionDeclarations[{number}]"
            if not isinstance(declaration, dict) or not isinstance(declaration.get("name"), str):
                raise TranslationError(f"'{where}.name' must be a string.", param=where)
            schema = declaration.get("parametersJsonSchema")
            if not isinstance(schema, dict):
                schema = declaration.get("parameters")
            description = declaration.get("description")
            tools.append(ToolDef(declaration["name"], description if isinstance(description, str) else None,
                                 json_schema_from_gemini(schema) if isinstance(schema, dict) else None))
    return tools


def _tool_choice(config: Any, tools: list[ToolDef]) -> tuple[ToolChoice | None, list[ToolDef]]:
    calling = config.get("functionCallingConfig") if isinstance(config, dict) else None
    if not isinstance(calling, dict):
        return None, tools
    mode = str(calling.get("mode") or "AUTO").upper()
    allowed = calling.get("allowedFunctionNames")
    names = [n for n in allowed if isinstance(n, str)] if isinstance(allowed, list) else []
    if mode == "NONE":
        return ToolChoice("none"), tools
    if mode != "ANY":
        return ToolChoice("auto"), tools  # AUTO, VALIDATED
    if len(names) == 1:
        return ToolChoice("tool", names[0]), tools
    # ANY with several allowed names: a call to one of them is required, so the others go.
    return ToolChoice("required"), [t for t in tools if t.name in names] if names else tools


def _reasoning(config: dict[str, Any]) -> tuple[Effort | None, int | None]:
    thinking = config.get("thinkingConfig")
    if not isinstance(thinking, dict):
        return None, None
    level = thinking.get("thinkingLevel")
    if isinstance(level, str) and level.upper() in EFFORT_FROM_LEVEL:
        return EFFORT_FROM_LEVEL[level.upper()], None
    budget = thinking.get("thinkingBudget")
    if isinstance(budget, int) and not isinstance(budget, bool):
        if budget < 0:
            return "medium", None  # -1: "dynamic", the model decides
        return None, budget
    return None, None


def _response_format(config: dict[str, Any]) -> dict[str, Any] | None:
    if config.get("responseMimeType") != "application/json":
        return None  # text/plain (the default); text/x.enum has no counterpart elsewhere
    schema = config.get("responseJsonSchema")
    if not isinstance(schema, dict):
        schema = config.get("responseSchema")
    if isinstance(schema, dict):
        return {"type": "json_schema", "name": "response", "schema": json_schema_from_gemini(schema),
                "strict": False}
    return {"type": "json_object"}


def _generation(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("generationConfig")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise TranslationError("'generationConfig' must be an object.", param="generationConfig")
    for name in ("temperature", "topP"):
        value = config.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise TranslationError(f"'generationConfig.{name}' must be a number.", param=f"generationConfig.{name}")
    stop = config.get("stopSequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise TranslationError("'generationConfig.stopSequences' must be an array of strings.",
                               param="generationConfig.stopSequences")
    modalities = config.get("responseModalities")
    if isinstance(modalities, list) and any(str(m).upper() != "TEXT" for m in modalities):
        raise TranslationError("Only text answers can come from this provider ('generationConfig."
                               "responseModalities').", param="generationConfig.responseModalities")
    count = config.get("candidateCount")
    return config | {"candidateCount": count if isinstance(count, int) and count > 0 else 1}


def decode_request(body: dict[str, Any], *, stream: bool = False) -> ChatRequest:
    """A generateContent body (checked by proxy.parsing.validate_gemini_generate) as the IR.

    `stream` says which method the URL named (streamGenerateContent). Translated: contents
    (user / model turns; text, inline images, inline text, http(s) image files, functionCall,
    functionResponse, thought parts and thought signatures as Reasoning with wire "gemini"),
    systemInstruction, functionDeclarations (parameters or parametersJsonSchema, Gemini's
    capitalised types made standard), toolConfig, temperature, topP, maxOutputTokens,
    stopSequences, candidateCount, responseMimeType with responseSchema / responseJsonSchema,
    thinkingConfig (thinkingLevel as an effort, thinkingBudget as a budget, -1 as medium).
    Dropped: Google's own tools (googleSearch, codeExecution, urlContext...), topK, seed,
    penalties, safetySettings, labels, includeThoughts (thoughts are always passed on).
    Refused: cachedContent, other inline media, Google-hosted files, audio or image output.
    """
    if body.get("cachedContent"):
        raise TranslationError("'cachedContent' names a cache that only Gemini holds; it cannot be used with "
                               "this provider.", param="cachedContent")
    ids = _CallIds()
    messages: list[Message] = []
    for index, content in enumerate(body["contents"]):
        role = "assistant" if content.get("role") == "model" else "user"
        for number, raw in enumerate(content["parts"]):
            for part, part_role in _part(raw, role, _where(index, number), ids):
                if isinstance(part, Reasoning) and part_role != "assistant":
                    continue
                if messages and messages[-1].role == part_role:
                    messages[-1].parts.append(part)
                else:
                    messages.append(Message(part_role, [part]))  # type: ignore[arg-type]
    config = _generation(body)
    tools = _tools(body.get("tools"))
    tool_choice, tools = _tool_choice(body.get("toolConfig"), tools)
    effort, budget = _reasoning(config)
    limit = config.get("maxOutputTokens")
    return ChatRequest(
        messages=messages, system=_system(body.get("systemInstruction")), tools=tools,
        tool_choice=tool_choice if tools else None, max_tokens=limit if isinstance(limit, int) else None,
        temperature=config.get("temperature"), top_p=config.get("topP"), stop=list(config.get("stopSequences") or []),
        stream=stream, n=config.get("candidateCount", 1), reasoning_effort=effort, thinking_budget=budget,
        response_format=_response_format(config),
    )


# --- Answers out ----------------------------------------------------------------------------


def usage_metadata(usage: Usage | StreamUsage) -> dict[str, int]:
    """The IR's usage as Gemini's usageMetadata: candidates leave the thoughts out."""
    prompt, output = usage.input_tokens or 0, usage.output_tokens or 0
    metadata = {"promptTokenCount": prompt, "candidatesTokenCount": max(output - usage.reasoning_tokens, 0),
                "totalTokenCount": prompt + output}
    if usage.cache_read_tokens:
        metadata["cachedContentTokenCount"] = usage.cache_read_tokens
    if usage.reasoning_tokens:
        metadata["thoughtsTokenCount"] = usage.reasoning_tokens
    return metadata


def _reasoning_part(text: str, signature: str | None, wire: str | None) -> dict[str, Any] | None:
    """A thought part. Only a Gemini provider's signature goes with it: Gemini clients send
    signatures back, and one from another provider would be refused by Gemini on a later
    same-format call."""
    part: dict[str, Any] = {"text": text, "thought": True} if text else {}
    if signature and wire == "gemini":
        part["thoughtSignature"] = signature
    return part or None


def _call_part(ident: str, name: str, args: str) -> dict[str, Any]:
    return {"functionCall": {"id": ident, "name": name, "args": arguments(args)}}


def _parts(parts: list[Part]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    signature: str | None = None  # a Gemini signature without thought text: it goes on the next part
    for part in parts:
        encoded: dict[str, Any] | None = None
        if isinstance(part, Reasoning) and not part.redacted:
            if not part.text and part.signature and part.wire == "gemini":
                signature = part.signature
                continue
            encoded = _reasoning_part(part.text, part.signature, part.wire)
        elif isinstance(part, Text) and part.text:
            encoded = {"text": part.text}
        elif isinstance(part, ToolCall):
            encoded = _call_part(part.id, part.name, part.arguments)
        if encoded is None:
            continue
        if signature and "thoughtSignature" not in encoded:
            encoded["thoughtSignature"], signature = signature, None
        out.append(encoded)
    if signature:
        out.append({"text": "", "thoughtSignature": signature})  # as Gemini ends a signed answer
    return out


def encode_response(response: ChatResponse) -> dict[str, Any]:
    """The IR's answer as a GenerateContentResponse."""
    return {
        "candidates": [{"content": {"role": "model", "parts": _parts(response.parts)},
                        "finishReason": FINISH_TO_GEMINI[response.finish], "index": 0}],
        "usageMetadata": usage_metadata(response.usage),
        "modelVersion": response.model, "responseId": response.id,
    }


def sse_error_event(message: str, status: int = 502) -> bytes:
    """An error inside an alt=sse stream, as Google writes it (a pass-through stream cut short)."""
    return b"data: " + orjson.dumps(error_body(status, message)) + b"\r\n\r\n"


class StreamEncoder:
    """Internal stream events in, one GenerateContentResponse chunk per event out.

    `sse=True` (alt=sse, what the SDKs and Gemini CLI ask for): `data: {...}` events ending
    in CRLF pairs, as Google sends them. `sse=False`: Google's streamed JSON array,
    `[{...}` then `\\n,{...}` per chunk, closed by `\\n]`. The last chunk (finishReason and
    usage) is the `terminal`, held by the pipeline until the audit row is written. A
    function call goes out whole, in one part, once its arguments are complete.
    """

    def __init__(self, *, model: str = "", sse: bool = True) -> None:
        self.model = model
        self.sse = sse
        self.content_type = "text/event-stream" if sse else "application/json"
        self.response_id = ""
        self.started = False  # a chunk has gone out (the array is open)
        self.finish: Finish = "end"
        self.usage = Usage()
        self.calls: dict[int, list[str]] = {}  # index -> [id, name, arguments so far, signature], not yet sent
        self.signature = ""  # a Gemini signature without thought text, for the next part

    def _frame(self, payload: dict[str, Any], *, last: bool = False) -> bytes:
        data = orjson.dumps(payload)
        if self.sse:
            return b"data: " + data + b"\r\n\r\n"
        head = b"\n," if self.started else b"["
        if last:
            return head + data + b"\n]"  # read twice by the pipeline: changes nothing
        self.started = True
        return head + data

    def _chunk(self, parts: list[dict[str, Any]]) -> bytes:
        return self._frame({"candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
                            "modelVersion": self.model, "responseId": self.response_id})

    def _flush_calls(self) -> bytes:
        parts = []
        for ident, name, args, signature in self.calls.values():
            part = _call_part(ident, name, args)
            if signature:
                part["thoughtSignature"] = signature
            parts.append(part)
        self.calls.clear()
        return self._chunk(parts) if parts else b""

    def _signed(self, part: dict[str, Any]) -> dict[str, Any]:
        if self.signature:
            part["thoughtSignature"], self.signature = self.signature, ""
        return part

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamStart):
            self.response_id = self.response_id or event.id
            self.model = self.model or event.model
            if event.input_tokens is not None:
                self.usage.input_tokens = event.input_tokens
            return b""
        if isinstance(event, ToolCallStart):
            out = b"" if event.index in self.calls else self._flush_calls()
            self.calls[event.index] = [event.id, event.name, "", self.signature]
            self.signature = ""
            return out
        if isinstance(event, ToolCallDelta):
            if event.index in self.calls:
                self.calls[event.index][2] += event.arguments
            return b""
        if isinstance(event, TextDelta):
            return self._flush_calls() + (self._chunk([self._signed({"text": event.text})]) if event.text else b"")
        if isinstance(event, ReasoningDelta):
            if not event.text and event.signature and event.wire == "gemini":
                self.signature = event.signature
                return b""
            part = _reasoning_part(event.text, event.signature, event.wire)
            return self._flush_calls() + (self._chunk([part]) if part else b"")
        if isinstance(event, StreamFinish):
            self.finish = event.finish
        elif isinstance(event, StreamUsage):
            usage = self.usage
            usage.input_tokens = event.input_tokens if event.input_tokens is not None else usage.input_tokens
            usage.output_tokens = event.output_tokens if event.output_tokens is not None else usage.output_tokens
            usage.cache_read_tokens = event.cache_read_tokens or usage.cache_read_tokens
            usage.reasoning_tokens = event.reasoning_tokens or usage.reasoning_tokens
        return b""

    def tail(self) -> bytes:
        """Function calls still open when the provider's stream ended, and a last signature."""
        out = self._flush_calls()
        if self.signature:
            out += self._chunk([self._signed({"text": ""})])
        return out

    @property
    def terminal(self) -> bytes:
        """The last chunk: finishReason and usage (and the array's end)."""
        return self._frame({
            "candidates": [{"content": {"role": "model", "parts": []},
                            "finishReason": FINISH_TO_GEMINI[self.finish], "index": 0}],
            "usageMetadata": usage_metadata(self.usage), "modelVersion": self.model,
            "responseId": self.response_id}, last=True)

    def error_event(self, message: str, code: str = "", status: int = 502) -> bytes:
        """An error in the stream's own framing (Google ends a failing stream with an error object)."""
        return self._frame(error_body(status, message), last=True)
