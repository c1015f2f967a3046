"""Gemini generateContent and streamGenerateContent: request parsing, answer and stream.

One module per wire format, as in proxy/providers/: each reads its requests into the shared
Conversation and renders the shared Reply, so the formats cannot drift apart in their rules.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from proxy.sandbox.fields import (
    add_call,
    add_result,
    add_text,
    camel,
    check_list,
    check_number,
    check_object,
    check_positive_int,
    check_string,
    check_string_list,
    check_tool_name,
)
from proxy.sandbox.model import (
    Conversation,
    Reply,
    SandboxRequestError,
    ToolDef,
    Turn,
    Usage,
    canonical_json,
    split_chunks,
)


def parse(body: dict, model: str) -> Conversation:
    contents = check_list(body.get("contents"), "contents", non_empty=True)
    system: list[str] = []
    instruction = camel(body, "systemInstruction", "system_instruction")
    if isinstance(instruction, str):
        system = [instruction] if instruction else []
    elif instruction is not None:
        parts = check_list(check_object(instruction, "systemInstruction").get("parts"), "systemInstruction.parts")
        system = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"]]

    turns: list[Turn] = []
    for i, content in enumerate(contents):
        param = f"contents[{i}]"
        role = check_object(content, param).get("role") or "user"
        if role not in ("user", "model", "function"):
            raise SandboxRequestError(f"Invalid role {role!r}: use 'user' or 'model'.", f"{param}.role")
        turn = Turn("assistant" if role == "model" else "user")
        for j, part in enumerate(check_list(content.get("parts"), f"{param}.parts")):
            _part(turn, check_object(part, f"{param}.parts[{j}]"), f"{param}.parts[{j}]")
        turns.append(turn)

    config = camel(body, "generationConfig", "generation_config") or {}
    check_object(config, "generationConfig")
    check_number(config.get("temperature"), "generationConfig.temperature")
    max_tokens = check_positive_int(camel(config, "maxOutputTokens", "max_output_tokens"),
                                    "generationConfig.maxOutputTokens")
    stop = check_string_list(camel(config, "stopSequences", "stop_sequences"), "generationConfig.stopSequences")
    conv = Conversation(model=model, system=system, turns=turns, tools=[], max_tokens=max_tokens, stop=stop)

    tools = body.get("tools")
    if tools is not None:
        for i, tool in enumerate(check_list(tools, "tools")):
            declarations = camel(check_object(tool, f"tools[{i}]"), "functionDeclarations", "function_declarations")
            for j, declaration in enumerate(check_list(declarations or [], f"tools[{i}].functionDeclarations")):
                param = f"tools[{i}].functionDeclarations[{j}]"
                check_object(declaration, param)
                schema = declaration.get("parameters") or camel(
                    declaration, "parametersJsonSchema", "parameters_json_schema") or {}
                conv.tools.append(ToolDef(check_string(declaration.get("name"), f"{param}.name", required=True) or "",
                                          declaration.get("description") or "", check_object(schema, param)))
    tool_config = camel(body, "toolConfig", "tool_config")
    if tool_config is not None:
        calling = camel(check_object(tool_config, "toolConfig"), "functionCallingConfig", "function_calling_config")
        calling = check_object(calling or {}, "toolConfig.functionCallingConfig")
        mode = calling.get("mode") or "AUTO"
        if mode == "NONE":
            conv.tool_mode = "none"
        elif mode in ("ANY", "VALIDATED"):
            conv.tool_mode = "required"
        allowed = check_string_list(camel(calling, "allowedFunctionNames", "allowed_function_names"),
                                    "toolConfig.functionCallingConfig.allowedFunctionNames")
        if allowed and conv.tool_mode != "none":
            conv.tool_name = allowed[0]
    return check_tool_name(conv, "toolConfig.functionCallingConfig.allowedFunctionNames")


def _part(turn: Turn, part: dict, param: str) -> None:
    if "text" in part:
        if not isinstance(part["text"], str):
            raise SandboxRequestError("A text part needs a string.", f"{param}.text")
        add_text(turn, part["text"])
        return
    call = camel(part, "functionCall", "function_call")
    response = camel(part, "functionResponse", "function_response")
    if call is not None:
        check_object(call, f"{param}.functionCall")
        add_call(turn, check_string(call.get("name"), f"{param}.functionCall.name") or "",
                 canonical_json(call.get("args") or {}))
    elif response is not None:
        check_object(response, f"{param}.functionResponse")
        add_result(turn, [_function_response_text(response.get("response"))])
    elif camel(part, "inlineData", "inline_data") is not None or camel(part, "fileData", "file_data") is not None:
        turn.attachments += 1


def _function_response_text(response: Any) -> str:
    """{"result"|"content"|"output": "<text>"} counts as that text, like an OpenAI tool message."""
    if isinstance(response, dict) and len(response) == 1:
        ((key, value),) = response.items()
        if key in ("result", "content", "output") and isinstance(value, str):
            return value
    return canonical_json(response if response is not None else {})


FINISH = {"end": "STOP", "max_tokens": "MAX_TOKENS", "stop_sequence": "STOP", "tool_use": "STOP"}


def usage_json(usage: Usage) -> dict[str, int]:
    """usageMetadata: the prompt count includes the cached tokens; thoughts are counted apart."""
    data = {"promptTokenCount": usage.prompt_tokens,
            "candidatesTokenCount": usage.completion_tokens - usage.reasoning_tokens,
            "totalTokenCount": usage.total_tokens}
    # The API leaves out zero counts; Gemini reports no cache writes (its caches are made apart).
    if usage.cache_read_tokens:
        data["cachedContentTokenCount"] = usage.cache_read_tokens
    if usage.reasoning_tokens:
        data["thoughtsTokenCount"] = usage.reasoning_tokens
    return data


def response_json(conv: Conversation, ident: str, part: dict, reply: Reply | None) -> dict:
    """One GenerateContentResponse; `reply` is given for the last one (finishReason and usage)."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}, "index": 0}
    response: dict[str, Any] = {"candidates": [candidate]}
    if reply is not None:
        candidate["finishReason"] = FINISH[reply.finish]
        response["usageMetadata"] = usage_json(reply.usage)
    response["modelVersion"] = conv.model
    response["responseId"] = ident
    return response


def reply_part(reply: Reply) -> dict:
    if reply.tool_name is not None:
        return {"functionCall": {"name": reply.tool_name, "args": reply.tool_arguments}}
    return {"text": reply.text}


def events(conv: Conversation, reply: Reply, ident: str, chunks: int, sse: bool) -> Iterator[bytes]:
    # A function call cannot be split: Gemini sends it whole, in the one and last event.
    if reply.tool_name is not None:
        parts = [reply_part(reply)]
    else:
        parts = [{"text": p} for p in split_chunks(reply.text or "", chunks)]
    last = len(parts) - 1
    for i, part in enumerate(parts):
        data = orjson.dumps(response_json(conv, ident, part, reply if i == last else None))
        if sse:
            # The real API ends SSE events with CRLF pairs; gateways must parse SSE by the spec.
            yield b"data: " + data + b"\r\n\r\n"
        else:
            # Without alt=sse the API streams one JSON array, element by element.
            yield (b"[" if i == 0 else b",\r\n") + data + (b"]" if i == last else b"")


def answer(conv: Conversation, reply: Reply, ident: str) -> dict:
    """The non-stream GenerateContentResponse."""
    return response_json(conv, ident, reply_part(reply), reply)
