"""OpenAI Responses API (POST /v1/responses): request parsing, the response object and its stream.

Codex CLI speaks only this format, so the sandbox must serve it as the real API does: typed
`input` items, `instructions`, flat function tools, `function_call` output items, numbered SSE
events (`sequence_number`) and the `response.completed` or `response.incomplete` ending. It reads
into the same Conversation as the other formats, so the same conversation gets the same reply and
the same token counts here as in Chat Completions.
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
    check_tool_name,
)
from proxy.sandbox.model import Conversation, Reply, SandboxRequestError, ToolDef, Turn, Usage, split_chunks

_TEXT_PARTS = ("input_text", "output_text", "text")
_ATTACHMENT_PARTS = ("input_image", "input_file", "input_audio")
# Items of the tools the sandbox does not simulate (web search, computer use, shell...) and
# reasoning items carry nothing it counts: they are accepted and skipped.
_CALL_ITEMS = {"function_call": "arguments", "custom_tool_call": "input"}
_OUTPUT_ITEMS = ("function_call_output", "custom_tool_call_output")


def parse(body: dict) -> Conversation:
    """Validate a Responses API body and reduce it to a Conversation; raises SandboxRequestError."""
    model = check_string(body.get("model"), "model", required=True)
    for key in ("temperature", "top_p"):
        check_number(body.get(key), key)
    stream = check_boolean(body.get("stream"), "stream")
    max_tokens = check_positive_int(body.get("max_output_tokens"), "max_output_tokens")
    instructions = check_string(body.get("instructions"), "instructions")
    system = [instructions] if instructions else []

    turns: list[Turn] = []
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        turn = Turn("user")
        add_text(turn, raw_input)
        turns.append(turn)
    elif isinstance(raw_input, list) and raw_input:
        for i, item in enumerate(raw_input):
            _item(system, turns, check_object(item, f"input[{i}]"), f"input[{i}]")
    else:
        raise SandboxRequestError("'input' must be a string or a non-empty array of input items.", "input")

    conv = Conversation(model=model or "", system=system, turns=turns, tools=[], max_tokens=max_tokens, stream=stream)
    if body.get("tools") is not None:
        for i, tool in enumerate(check_list(body["tools"], "tools")):
            if check_object(tool, f"tools[{i}]").get("type") != "function":
                continue  # built-in and custom tools are not simulated
            name = check_string(tool.get("name"), f"tools[{i}].name", required=True) or ""
            parameters = check_object(tool.get("parameters") or {}, f"tools[{i}].parameters")
            conv.tools.append(ToolDef(name, tool.get("description") or "", parameters))
    choice = body.get("tool_choice")
    if choice in ("none", "auto", "required"):
        conv.tool_mode = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        conv.tool_name = check_string(choice.get("name"), "tool_choice.name", required=True)
    elif isinstance(choice, dict) and choice.get("type") == "allowed_tools" and choice.get("mode") == "required":
        conv.tool_mode = "required"
    elif choice is not None and not isinstance(choice, dict):
        raise SandboxRequestError("'tool_choice' must be none, auto, required or an object.", "tool_choice")
    return check_tool_name(conv, "tool_choice")


def _item(system: list[str], turns: list[Turn], item: dict, param: str) -> None:
    kind = item.get("type")
    if kind == "message" or (kind is None and "role" in item):
        role = item.get("role")
        if role in ("system", "developer"):
            system.extend(t for t in _texts(item.get("content"), f"{param}.content") if t)
        elif role in ("user", "assistant"):
            turn = Turn(role)
            _content(turn, item.get("content"), f"{param}.content")
            turns.append(turn)
        else:
            raise SandboxRequestError(f"Invalid role {role!r}.", f"{param}.role")
    elif kind in _CALL_ITEMS:
        check_string(item.get("call_id"), f"{param}.call_id", required=True)
        name = check_string(item.get("name"), f"{param}.name", required=True) or ""
        field = _CALL_ITEMS[kind]
        arguments = item.get(field) or ""
        if not isinstance(arguments, str):
            raise SandboxRequestError(f"'{param}.{field}' must be a string.", f"{param}.{field}")
        # Chat Completions puts an assistant's text and its calls in one message: calls that follow
        # an assistant message (or each other) join it, so both formats count the same.
        if not turns or turns[-1].role != "assistant":
            turns.append(Turn("assistant"))
        add_call(turns[-1], name, canonical_arguments(arguments) if kind == "function_call" else arguments)
    elif kind in _OUTPUT_ITEMS:
        check_string(item.get("call_id"), f"{param}.call_id", required=True)
        turn = Turn("tool")
        output = item.get("output")
        if output is None or isinstance(output, str):
            add_result(turn, [output or ""])
        else:
            texts = []
            for j, part in enumerate(check_list(output, f"{param}.output")):
                part_kind = check_object(part, f"{param}.output[{j}]").get("type")
                if part_kind in _TEXT_PARTS:
                    texts.append(part.get("text") or "")
                elif part_kind in _ATTACHMENT_PARTS:
                    turn.attachments += 1
            add_result(turn, texts)
        turns.append(turn)
    elif not isinstance(kind, str):
        raise SandboxRequestError("An input item needs a 'type' or a 'role'.", param)


def _texts(content: Any, param: str) -> list[str]:
    if content is None or isinstance(content, str):
        return [content or ""]
    return [part.get("text") or "" for part in check_list(content, param)
            if check_object(part, param).get("type") in _TEXT_PARTS]


def _content(turn: Turn, content: Any, param: str) -> None:
    if content is None or isinstance(content, str):
        add_text(turn, content or "")
        return
    for j, part in enumerate(check_list(content, param)):
        kind = check_object(part, f"{param}[{j}]").get("type")
        if kind in _TEXT_PARTS:
            text = part.get("text")
            if not isinstance(text, str):
                raise SandboxRequestError("A text part needs a string 'text'.", f"{param}[{j}].text")
            add_text(turn, text)
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            turn.pieces.append(part["refusal"])
        elif kind in _ATTACHMENT_PARTS:
            turn.attachments += 1


def usage_json(usage: Usage) -> dict[str, Any]:
    """ResponseUsage: input tokens include the cached ones, output tokens the reasoning ones."""
    input_details = {"cached_tokens": usage.cache_read_tokens, "cache_write_tokens": usage.cache_write_tokens}
    return {"input_tokens": usage.prompt_tokens, "input_tokens_details": input_details,
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.total_tokens}


def _output_item(reply: Reply, ident: str, status: str, *, done: bool) -> dict[str, Any]:
    """The one output item: a message or a function call; `done` False gives its empty start."""
    if reply.tool_name is not None:
        return {"id": f"fc_{ident}", "type": "function_call", "status": status,
                "arguments": reply.arguments_json if done else "", "call_id": f"call_{ident}",
                "name": reply.tool_name}
    content = [_text_part(reply.text or "")] if done else []
    return {"id": f"msg_{ident}", "type": "message", "status": status, "role": "assistant", "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _finished(reply: Reply) -> tuple[str, dict[str, str] | None]:
    """(status, incomplete_details): a reply cut at max_output_tokens is incomplete."""
    if reply.finish == "max_tokens":
        return "incomplete", {"reason": "max_output_tokens"}
    return "completed", None


def _response(conv: Conversation, body: dict, ident: str, created: int, *, status: str,
              output: list[dict[str, Any]], usage: Usage | None, incomplete: dict[str, str] | None) -> dict:
    # Like the real API, the response echoes the request's settings (clients read some back).
    return {"id": f"resp_{ident}", "object": "response", "created_at": created, "status": status,
            "background": False, "error": None, "incomplete_details": incomplete,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"), "model": conv.model, "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
            "service_tier": "default", "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0), "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation", "disabled"),
            "usage": usage_json(usage) if usage is not None else None, "user": body.get("user"),
            "metadata": body.get("metadata") or {}}


def answer(conv: Conversation, reply: Reply, ident: str, created: int, body: dict) -> dict:
    """The non-stream Response object."""
    status, incomplete = _finished(reply)
    return _response(conv, body, ident, created, status=status, incomplete=incomplete, usage=reply.usage,
                     output=[_output_item(reply, ident, status, done=True)])


def events(conv: Conversation, reply: Reply, ident: str, created: int, chunks: int, body: dict) -> Iterator[bytes]:
    """The SSE stream: lifecycle events around one output item streamed in `chunks` deltas."""
    sequence = 0

    def event(kind: str, **data: Any) -> bytes:
        nonlocal sequence
        payload = orjson.dumps({"type": kind, "sequence_number": sequence, **data})
        sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"

    started = _response(conv, body, ident, created, status="in_progress", output=[], usage=None, incomplete=None)
    yield event("response.created", response=started)
    yield event("response.in_progress", response=started)
    status, incomplete = _finished(reply)
    item = _output_item(reply, ident, status, done=True)
    yield event("response.output_item.added", output_index=0,
                item=_output_item(reply, ident, "in_progress", done=False))
    where = {"item_id": item["id"], "output_index": 0}
    if reply.tool_name is not None:
        for piece in split_chunks(reply.arguments_json or "", chunks):
            yield event("response.function_call_arguments.delta", **where, delta=piece)
        yield event("response.function_call_arguments.done", **where, arguments=reply.arguments_json)
    else:
        text = reply.text or ""
        yield event("response.content_part.added", **where, content_index=0, part=_text_part(""))
        for piece in split_chunks(text, chunks):
            yield event("response.output_text.delta", **where, content_index=0, delta=piece, logprobs=[])
        yield event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
        yield event("response.content_part.done", **where, content_index=0, part=_text_part(text))
    yield event("response.output_item.done", output_index=0, item=item)
    final = _response(conv, body, ident, created, status=status, output=[item], usage=reply.usage,
                      incomplete=incomplete)
    yield event("response.completed" if status == "completed" else "response.incomplete", response=final)
