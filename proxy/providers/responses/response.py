"""The internal representation out as a Responses API `Response` object (the caller side's encode).

The object carries everything the openai SDK's `Response` model requires, so that
`client.responses.create()` parses it and `response.output_text` works; the request's
settings are echoed from the caller's own body, as OpenAI echoes them.
"""
from __future__ import annotations

from typing import Any

import orjson

from proxy.providers.ir import ChatResponse, Finish, Reasoning, Text, ToolCall, Usage
from proxy.providers.responses.common import (
    bare_response,
    custom_tool_names,
    encrypted_content,
    new_id,
    response_id,
    status_of,
    usage_body,
    wants_encrypted_reasoning,
)


def custom_input(arguments: str) -> str:
    """The raw input of a freeform tool's call, from the one-argument function it was given as."""
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(value, dict):
        if isinstance(value.get("input"), str):
            return value["input"]
        strings = [v for v in value.values() if isinstance(v, str)]
        if len(strings) == 1:  # the model named the argument its own way
            return strings[0]
    return arguments


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(ident: str, texts: list[str], status: str) -> dict[str, Any]:
    return {"id": ident, "type": "message", "status": status, "role": "assistant",
            "content": [text_part(t) for t in texts]}


def reasoning_item(ident: str, text: str, encrypted: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": ident, "type": "reasoning",
                            "summary": [{"type": "summary_text", "text": text}] if text else []}
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    return item


def call_item(call: ToolCall, *, custom: bool, status: str = "completed") -> dict[str, Any]:
    if custom:
        return {"id": new_id("ctc"), "type": "custom_tool_call", "status": status, "call_id": call.id,
                "name": call.name, "input": custom_input(call.arguments)}
    return {"id": new_id("fc"), "type": "function_call", "status": status, "call_id": call.id,
            "name": call.name, "arguments": call.arguments}


def _echo_tools(tools: Any) -> list[Any]:
    if not isinstance(tools, list):
        return []
    echoed = []
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            # OpenAI echoes a function tool with its defaults filled in; the SDK requires them.
            tool = {"parameters": None, "strict": True, **tool}
        echoed.append(tool)
    return echoed


def response_object(*, ident: str, model: str, status: str, output: list[dict[str, Any]],
                    usage: Usage | None, request: dict[str, Any], finish: Finish = "end",
                    error: dict[str, str] | None = None) -> dict[str, Any]:
    """A whole Response, its settings echoed from the caller's body."""
    body = request
    response = bare_response(ident, model, status)
    if status in ("completed", "incomplete"):
        response["incomplete_details"] = status_of(finish)[1]
    reasoning = body.get("reasoning")
    text = body.get("text")
    response.update({
        "error": error,
        "instructions": body.get("instructions") if isinstance(body.get("instructions"), str) else None,
        "max_output_tokens": body.get("max_output_tokens") if isinstance(body.get("max_output_tokens"), int) else None,
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": reasoning if isinstance(reasoning, dict) else {"effort": None, "summary": None},
        # Nothing is kept here for a later GET or previous_response_id, whatever the caller asked.
        "store": False,
        "temperature": body.get("temperature") if isinstance(body.get("temperature"), int | float) else None,
        "text": text if isinstance(text, dict) else {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") if body.get("tool_choice") is not None else "auto",
        "tools": _echo_tools(body.get("tools")),
        "top_p": body.get("top_p") if isinstance(body.get("top_p"), int | float) else None,
        "truncation": body.get("truncation") if body.get("truncation") in ("auto", "disabled") else "disabled",
        "usage": usage_body(usage) if usage is not None else None,
        "user": body.get("user") if isinstance(body.get("user"), str) else None,
        "background": False,
    })
    if isinstance(body.get("prompt_cache_key"), str):
        response["prompt_cache_key"] = body["prompt_cache_key"]
    return response


def output_items(response: ChatResponse, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Reasoning, message and call items in the order the parts came; adjacent texts share a message."""
    custom = custom_tool_names(request)
    include_encrypted = wants_encrypted_reasoning(request)
    status, _ = status_of(response.finish)
    items: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush_texts() -> None:
        if texts:
            items.append(message_item(new_id("msg"), list(texts), "completed"))
            texts.clear()

    for part in response.parts:
        if isinstance(part, Text):
            texts.append(part.text)
            continue
        flush_texts()
        if isinstance(part, Reasoning):
            encrypted = encrypted_content(part) if include_encrypted else None
            if part.text or encrypted:
                items.append(reasoning_item(new_id("rs"), part.text, encrypted))
        elif isinstance(part, ToolCall):
            items.append(call_item(part, custom=part.name in custom))
    flush_texts()
    if status == "incomplete" and items and items[-1]["type"] == "message":
        items[-1]["status"] = "incomplete"  # the text was cut short
    return items


def encode_response(response: ChatResponse, request: dict[str, Any] | None = None) -> dict[str, Any]:
    """`request` is the caller's own body: its settings are echoed, and its freeform tools' calls go
    back as `custom_tool_call` items."""
    body = request or {}
    status, _ = status_of(response.finish)
    return response_object(ident=response_id(response.id), model=response.model, status=status,
                           output=output_items(response, body), usage=response.usage, request=body,
                           finish=response.finish)
