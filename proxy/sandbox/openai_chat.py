"""OpenAI Chat Completions (POST /v1/chat/completions): request parsing, answer and stream.

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
    canonical_arguments,
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
from proxy.sandbox.model import Conversation, Reply, SandboxRequestError, ToolDef, Turn, Usage, split_chunks


def parse(body: dict) -> Conversation:
    """Validate a chat completions body and reduce it to a Conversation; raises SandboxRequestError."""
    model = check_string(body.get("model"), "model", required=True)
    messages = check_list(body.get("messages"), "messages", non_empty=True)
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        check_number(body.get(key), key)
    check_positive_int(body.get("n"), "n")
    stream = check_boolean(body.get("stream"), "stream")
    include_usage = False
    if body.get("stream_options") is not None:
        options = check_object(body["stream_options"], "stream_options")
        include_usage = check_boolean(options.get("include_usage"), "stream_options.include_usage")
    max_tokens = check_positive_int(body.get("max_completion_tokens"), "max_completion_tokens")
    if max_tokens is None:
        max_tokens = check_positive_int(body.get("max_tokens"), "max_tokens")

    system: list[str] = []
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        check_object(message, param)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(t for t in _texts(content, f"{param}.content") if t)
        elif role in ("user", "assistant"):
            turn = Turn(role)
            _content(turn, content, f"{param}.content")
            if role == "assistant" and message.get("tool_calls") is not None:
                for j, call in enumerate(check_list(message["tool_calls"], f"{param}.tool_calls")):
                    function = check_object(check_object(call, f"{param}.tool_calls[{j}]").get("function"),
                                            f"{param}.tool_calls[{j}].function")
                    name = check_string(function.get("name"), f"{param}.tool_calls[{j}].function.name") or ""
                    arguments = function.get("arguments") or ""
                    if not isinstance(arguments, str):
                        raise SandboxRequestError("Tool call arguments must be a JSON string.",
                                                  f"{param}.tool_calls[{j}].function.arguments")
                    add_call(turn, name, canonical_arguments(arguments))
            turns.append(turn)
        elif role in ("tool", "function"):
            turn = Turn("tool")
            add_result(turn, _texts(content, f"{param}.content"))
            turns.append(turn)
        else:
            raise SandboxRequestError(f"Invalid role {role!r}.", f"{param}.role")

    conv = Conversation(model=model or "", system=system, turns=turns, tools=[], max_tokens=max_tokens,
                        stop=check_string_list(body.get("stop"), "stop", allow_string=True), stream=stream,
                        include_usage=include_usage)
    if body.get("tools") is not None:
        for i, tool in enumerate(check_list(body["tools"], "tools")):
            check_object(tool, f"tools[{i}]")
            if tool.get("type", "function") != "function":
                continue  # custom and built-in tools are not simulated
            function = check_object(tool.get("function"), f"tools[{i}].function")
            name = check_string(function.get("name"), f"tools[{i}].function.name", required=True) or ""
            conv.tools.append(ToolDef(name, function.get("description") or "", function.get("parameters") or {}))
    choice = body.get("tool_choice")
    if choice in ("none", "auto", "required"):
        conv.tool_mode = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = check_object(choice.get("function"), "tool_choice.function")
        conv.tool_name = check_string(function.get("name"), "tool_choice.function.name", required=True)
    elif choice is not None and not isinstance(choice, dict):
        raise SandboxRequestError("'tool_choice' must be none, auto, required or an object.", "tool_choice")
    return check_tool_name(conv, "tool_choice")


def _texts(content: Any, param: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise content_type_error(param)
    return [part.get("text") or "" for part in check_list(content, param)
            if check_object(part, param).get("type") == "text"]


def _content(turn: Turn, content: Any, param: str) -> None:
    if content is None:
        return
    if isinstance(content, str):
        add_text(turn, content)
        return
    if not isinstance(content, list):
        raise content_type_error(param)
    for j, part in enumerate(content):
        kind = check_object(part, f"{param}[{j}]").get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise SandboxRequestError("A text part needs a string 'text'.", f"{param}[{j}].text")
            add_text(turn, text)
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            turn.pieces.append(part["refusal"])
        elif kind in ("image_url", "input_audio", "file"):
            turn.attachments += 1


FINISH = {"end": "stop", "max_tokens": "length", "stop_sequence": "stop", "tool_use": "tool_calls"}


def usage_json(usage: Usage) -> dict[str, Any]:
    """CompletionUsage: prompt tokens include the cached ones, completion tokens the reasoning ones."""
    data: dict[str, Any] = {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                            "total_tokens": usage.total_tokens}
    # The details appear only when a usage knob is in effect, so that the default answer stays
    # byte for byte what it was.
    if usage.cache_read_tokens or usage.cache_write_tokens or usage.reasoning_tokens:
        prompt_details = {"cached_tokens": usage.cache_read_tokens}
        if usage.cache_write_tokens:
            prompt_details["cache_write_tokens"] = usage.cache_write_tokens
        data["prompt_tokens_details"] = prompt_details
        data["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return data


def answer(conv: Conversation, reply: Reply, ident: str, created: int) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_name is not None:
        message["tool_calls"] = [{"id": f"call_{ident}", "type": "function",
                                  "function": {"name": reply.tool_name, "arguments": reply.arguments_json}}]
    return {"id": f"chatcmpl-{ident}", "object": "chat.completion", "created": created, "model": conv.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": FINISH[reply.finish]}],
            "usage": usage_json(reply.usage)}


def events(conv: Conversation, reply: Reply, ident: str, created: int, chunks: int) -> Iterator[bytes]:
    base: dict[str, Any] = {"id": f"chatcmpl-{ident}", "object": "chat.completion.chunk", "created": created,
                            "model": conv.model}
    if conv.include_usage:
        base["usage"] = None  # the API's rule: every chunk but the last carries usage: null

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    if reply.tool_name is not None:
        yield chunk({"role": "assistant", "content": None, "refusal": None, "tool_calls": [
            {"index": 0, "id": f"call_{ident}", "type": "function",
             "function": {"name": reply.tool_name, "arguments": ""}}]})
        for piece in split_chunks(reply.arguments_json or "", chunks):
            yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    else:
        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in split_chunks(reply.text or "", chunks):
            yield chunk({"content": piece})
    yield chunk({}, FINISH[reply.finish])
    if conv.include_usage:
        yield b"data: " + orjson.dumps({**base, "choices": [], "usage": usage_json(reply.usage)}) + b"\n\n"
    yield b"data: [DONE]\n\n"
