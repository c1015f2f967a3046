"""Anthropic Messages (POST /v1/messages, /v1/messages/count_tokens): parsing, answer and stream.

One module per wire format, as in proxy/providers/: each reads its requests into the shared
Conversation and renders the shared Reply, so the formats cannot drift apart in their rules.
"""
from __future__ import annotations

from collections.abc import Iterator

import orjson

from proxy.sandbox.fields import (
    add_call,
    add_result,
    add_text,
    check_boolean,
    check_list,
    check_number,
    check_object,
    check_positive_int,
    check_string,
    check_string_list,
    check_tool_name,
    content_type_error,
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


def parse(body: dict, *, count_only: bool) -> Conversation:
    model = check_string(body.get("model"), "model", required=True)
    max_tokens = check_positive_int(body.get("max_tokens"), "max_tokens")
    if max_tokens is None and not count_only:
        raise SandboxRequestError("max_tokens: Field required", "max_tokens")
    messages = check_list(body.get("messages"), "messages", non_empty=True)
    for key in ("temperature", "top_p"):
        check_number(body.get(key), key)
    check_positive_int(body.get("top_k"), "top_k")
    stream = check_boolean(body.get("stream"), "stream")

    system: list[str] = []
    raw_system = body.get("system")
    if isinstance(raw_system, str):
        system = [raw_system] if raw_system else []
    elif raw_system is not None:
        for i, block in enumerate(check_list(raw_system, "system")):
            text = check_object(block, f"system[{i}]").get("text")
            if block.get("type") != "text" or not isinstance(text, str):
                raise SandboxRequestError("System blocks must be text blocks.", f"system[{i}]")
            if text:
                system.append(text)

    turns: list[Turn] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        role = check_object(message, param).get("role")
        if role not in ("user", "assistant"):
            raise SandboxRequestError(f"Invalid role {role!r}: use 'user' or 'assistant'.", f"{param}.role")
        turn = Turn(role)
        content = message.get("content")
        if isinstance(content, str):
            add_text(turn, content)
        elif not isinstance(content, list):
            raise content_type_error(f"{param}.content")
        else:
            for j, block in enumerate(content):
                _block(turn, check_object(block, f"{param}.content[{j}]"), f"{param}.content[{j}]")
        turns.append(turn)

    conv = Conversation(model=model or "", system=system, turns=turns, tools=[], max_tokens=max_tokens,
                        stop=check_string_list(body.get("stop_sequences"), "stop_sequences"), stream=stream)
    if body.get("tools") is not None:
        for i, tool in enumerate(check_list(body["tools"], "tools")):
            check_object(tool, f"tools[{i}]")
            schema = tool.get("input_schema") or {}
            conv.tools.append(ToolDef(check_string(tool.get("name"), f"tools[{i}].name", required=True) or "",
                                      tool.get("description") or "", check_object(schema, f"tools[{i}].input_schema")))
    if body.get("tool_choice") is not None:
        choice = check_object(body["tool_choice"], "tool_choice")
        kind = choice.get("type")
        if kind == "none":
            conv.tool_mode = "none"
        elif kind == "any":
            conv.tool_mode = "required"
        elif kind == "tool":
            conv.tool_name = check_string(choice.get("name"), "tool_choice.name", required=True)
        elif kind != "auto":
            raise SandboxRequestError("tool_choice.type must be auto, any, tool or none.", "tool_choice.type")
    return check_tool_name(conv, "tool_choice")


def _block(turn: Turn, block: dict, param: str) -> None:
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise SandboxRequestError("A text block needs a string 'text'.", f"{param}.text")
        add_text(turn, text)
    elif kind in ("image", "document"):
        turn.attachments += 1
    elif kind == "tool_use":
        name = check_string(block.get("name"), f"{param}.name") or ""
        add_call(turn, name, canonical_json(block.get("input") or {}))
    elif kind == "tool_result":
        content = block.get("content")
        if content is None or isinstance(content, str):
            add_result(turn, [content or ""])
        else:
            texts = []
            for item in check_list(content, f"{param}.content"):
                if check_object(item, f"{param}.content").get("type") == "text":
                    texts.append(item.get("text") or "")
                elif item.get("type") in ("image", "document"):
                    turn.attachments += 1
            add_result(turn, texts)
    elif kind == "thinking" and isinstance(block.get("thinking"), str):
        turn.pieces.append(block["thinking"])


STOP_REASON = {"end": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence",
               "tool_use": "tool_use"}


def _content(reply: Reply, ident: str) -> dict:
    if reply.tool_name is not None:
        return {"type": "tool_use", "id": f"toolu_{ident}", "name": reply.tool_name, "input": reply.tool_arguments}
    return {"type": "text", "text": reply.text}


def usage_json(usage: Usage, output_tokens: int) -> dict[str, int]:
    """Anthropic's usage: unlike OpenAI's, input_tokens excludes the tokens read from or written to cache."""
    data = {"input_tokens": usage.prompt_tokens - usage.cache_read_tokens - usage.cache_write_tokens}
    # Only when a cache knob is in effect, so that the default answer stays what it was.
    if usage.cache_read_tokens or usage.cache_write_tokens:
        data["cache_creation_input_tokens"] = usage.cache_write_tokens
        data["cache_read_input_tokens"] = usage.cache_read_tokens
    data["output_tokens"] = output_tokens
    return data


def answer(conv: Conversation, reply: Reply, ident: str) -> dict:
    return {"id": f"msg_{ident}", "type": "message", "role": "assistant", "model": conv.model,
            "content": [_content(reply, ident)], "stop_reason": STOP_REASON[reply.finish],
            "stop_sequence": reply.stop_sequence,
            "usage": usage_json(reply.usage, reply.usage.completion_tokens)}


def events(conv: Conversation, reply: Reply, ident: str, chunks: int) -> Iterator[bytes]:
    def event(name: bytes, data: dict) -> bytes:
        return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    yield event(b"message_start", {"type": "message_start", "message": {
        "id": f"msg_{ident}", "type": "message", "role": "assistant", "model": conv.model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": usage_json(reply.usage, 1)}})
    if reply.tool_name is not None:
        block = {**_content(reply, ident), "input": {}}
        pieces = [{"type": "input_json_delta", "partial_json": p}
                  for p in split_chunks(reply.arguments_json or "", chunks)]
    else:
        block = {"type": "text", "text": ""}
        pieces = [{"type": "text_delta", "text": p} for p in split_chunks(reply.text or "", chunks)]
    yield event(b"content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
    yield event(b"ping", {"type": "ping"})
    for delta in pieces:
        yield event(b"content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
    yield event(b"content_block_stop", {"type": "content_block_stop", "index": 0})
    yield event(b"message_delta", {"type": "message_delta",
                                   "delta": {"stop_reason": STOP_REASON[reply.finish],
                                             "stop_sequence": reply.stop_sequence},
                                   "usage": {"output_tokens": reply.usage.completion_tokens}})
    yield event(b"message_stop", {"type": "message_stop"})
