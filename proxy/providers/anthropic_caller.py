"""Anthropic Messages as a caller's format: our /v1/messages body in, Anthropic answers out.

Also the wire constants both sides of the format share (proxy.providers.anthropic, the
provider side, imports them from here and re-exports this module's public names).

Claude Code sends what Anthropic's current API takes (system-role messages inside
`messages`, thinking, server tools, `output_config`, `context_management`...). On a
cross-format call each of them is translated, dropped or refused here; the list is in
`decode_request`'s docstring.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.providers.common import obj
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
    fill_tool_result_names,
)
from proxy.providers.sse import sse_event

FINISH_TO_ANTHROPIC: dict[str, str] = {
    "end": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence", "tool_use": "tool_use",
    "content_filter": "refusal",
}
FINISH_FROM_ANTHROPIC: dict[str, Finish] = {
    "end_turn": "end", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence", "tool_use": "tool_use",
    "refusal": "content_filter", "pause_turn": "end", "model_context_window_exceeded": "max_tokens",
}
# Anthropic error type for an HTTP status, and back.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error",
}
STATUS_OF_ERROR_TYPE: dict[str, int] = {v: k for k, v in ERROR_TYPES.items()} | {"api_error": 500}

# output_config.effort -> the format-neutral effort ("xhigh" and "max" have no neutral name above "high").
EFFORT_FROM_ANTHROPIC: dict[str, Effort] = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high",
                                            "max": "high"}
# History blocks of Anthropic's server tools (run by Anthropic, meaningless to another provider):
# dropped, their text kept where they have any.
SERVER_TOOL_BLOCKS = frozenset({
    "server_tool_use", "web_search_tool_result", "web_fetch_tool_result", "code_execution_tool_result",
    "bash_code_execution_tool_result", "text_editor_code_execution_tool_result", "tool_search_tool_result",
    "mcp_tool_use", "mcp_tool_result", "container_upload",
})

_TOOL_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def tool_id(ident: str) -> str:
    # Anthropic accepts only [A-Za-z0-9_-] in tool ids; other providers' ids may hold more.
    return _TOOL_ID_UNSAFE.sub("_", ident) or "toolu_tollgate"


def usage_from_anthropic(usage: Any) -> Usage:
    """Anthropic's usage object in the IR's convention: input counts cache reads and writes too."""
    if not isinstance(usage, dict):
        return Usage()
    read = _int(usage.get("cache_read_input_tokens"))
    write = _int(usage.get("cache_creation_input_tokens"))
    creation = obj(usage.get("cache_creation"))
    write_1h = _int(creation.get("ephemeral_1h_input_tokens"))
    if not write and creation:
        write = write_1h + _int(creation.get("ephemeral_5m_input_tokens"))
    base = usage.get("input_tokens")
    output = usage.get("output_tokens")
    return Usage(
        input_tokens=base + read + write if isinstance(base, int) else None,
        output_tokens=output if isinstance(output, int) else None,
        cache_read_tokens=read, cache_write_tokens=write, cache_write_1h_tokens=write_1h,
    )


def usage_to_anthropic(usage: Usage | StreamUsage) -> dict[str, Any]:
    """The IR's usage as Anthropic writes it: `input_tokens` without the cached parts."""
    total = usage.input_tokens or 0
    read, write = usage.cache_read_tokens, usage.cache_write_tokens
    return {
        "input_tokens": max(total - read - write, 0), "output_tokens": usage.output_tokens or 0,
        "cache_read_input_tokens": read, "cache_creation_input_tokens": write,
        "cache_creation": {"ephemeral_5m_input_tokens": write - usage.cache_write_1h_tokens,
                           "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens},
    }


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


# --- The caller's body in -------------------------------------------------------------------


def _texts(content: Any, where: str) -> str:
    """The text of a system prompt or system message: a string or text blocks (cache_control ignored)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise TranslationError(f"'{where}' must be a string or an array of text blocks.", param=where)
    texts = []
    for number, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("text"), str):
            raise TranslationError(f"'{where}.{number}' must be a text block to be sent to this provider.",
                                   param=f"{where}.{number}")
        texts.append(block["text"])
    return "\n".join(texts)


def _nested_text(content: Any) -> str:
    """Text found in a tool result's or server block's content: a string, or text blocks."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "web_search_result" and isinstance(block.get("url"), str):
            texts.append(f"{block.get('title') or block['url']} ({block['url']})")
    return "\n".join(texts)


def _image(block: dict[str, Any], where: str) -> Image:
    source = obj(block.get("source"))
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        return Image(media_type=source.get("media_type"), data=source["data"])
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return Image(url=source["url"])
    raise TranslationError(f"'{where}.source' of type {source.get('type')!r} cannot be sent to this provider.",
                           param=where)


def _document(block: dict[str, Any], where: str) -> Text:
    """A plain-text document as text; PDFs and files stay with Anthropic (other providers take them
    differently or not at all, so the request is refused and failover tries an Anthropic deployment)."""
    source = obj(block.get("source"))
    title = block.get("title") if isinstance(block.get("title"), str) else None
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        text = source["data"]
    elif source.get("type") == "content":
        text = _nested_text(source.get("content"))
    else:
        kind = source.get("media_type") or source.get("type")
        raise TranslationError(f"'{where}' is a document ({kind}) that only Anthropic's API can read; only "
                               "plain-text documents can be sent to this provider.", param=where)
    return Text(f"{title}\n\n{text}" if title else text)


def _json_text(value: Any, where: str) -> str:
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):  # e.g. an integer past 64 bits
        raise TranslationError(f"'{where}.input' cannot be sent as JSON to this provider.",
                               param=f"{where}.input") from None


def _part(block: dict[str, Any], role: str, where: str) -> tuple[Part | None, str]:
    """One content block as an IR part and the role of the message it belongs in (None: dropped)."""
    kind = block["type"]
    if kind == "text":
        return Text(str(block.get("text", ""))), role
    if kind == "tool_result":
        return ToolResult(str(block.get("tool_use_id") or ""), _nested_text(block.get("content")), None,
                          bool(block.get("is_error"))), "tool"
    if kind == "tool_use":
        return ToolCall(str(block.get("id") or ""), str(block.get("name") or ""),
                        _json_text(block.get("input") or {}, where)), role
    if kind == "image":
        return _image(block, where), role
    if kind == "document":
        return _document(block, where), role
    if kind == "thinking":
        signature = block.get("signature") if isinstance(block.get("signature"), str) else None
        return Reasoning(str(block.get("thinking") or ""), signature, wire="anthropic"), role
    if kind == "redacted_thinking":
        return Reasoning("", str(block.get("data") or ""), redacted=True, wire="anthropic"), role
    if kind == "search_result":
        title = block.get("title") if isinstance(block.get("title"), str) else ""
        text = _nested_text(block.get("content"))
        return Text(f"{title}\n{text}" if title else text), role
    if kind in SERVER_TOOL_BLOCKS:
        text = _nested_text(block.get("content"))
        return (Text(text) if text else None), role
    raise TranslationError(f"Content blocks of type {kind!r} ('{where}') cannot be sent to this provider.",
                           param=where)


def _tools(raw: Any) -> list[ToolDef]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TranslationError("'tools' must be an array of tool objects.", param="tools")
    tools = []
    for index, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise TranslationError(f"'tools.{index}' must be a tool object.", param=f"tools.{index}")
        if tool.get("type") not in (None, "custom"):
            # Server tools (web_search_..., code_execution_...) and Anthropic-schema client tools
            # (bash_..., text_editor_..., computer_...) exist only on Anthropic: left out, so an
            # agent that always declares them still works elsewhere with its own tools.
            continue
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise TranslationError(f"'tools.{index}.name' must be a non-empty string.", param=f"tools.{index}.name")
        schema = tool.get("input_schema")
        description = tool.get("description")
        tools.append(ToolDef(tool["name"], description if isinstance(description, str) else None,
                             schema if isinstance(schema, dict) else None))
    return tools


def _tool_choice(choice: Any) -> tuple[ToolChoice | None, bool | None]:
    if choice is None:
        return None, None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "none", "tool"):
        raise TranslationError("'tool_choice' must be an object with type auto, any, tool or none.",
                               param="tool_choice")
    kind = choice["type"]
    if kind == "tool" and not isinstance(choice.get("name"), str):
        raise TranslationError("'tool_choice.name' must name a tool.", param="tool_choice.name")
    tool_choice = {"auto": ToolChoice("auto"), "any": ToolChoice("required"), "none": ToolChoice("none"),
                   "tool": ToolChoice("tool", choice.get("name"))}[kind]
    return tool_choice, (False if choice.get("disable_parallel_tool_use") is True else None)


def _reasoning(body: dict[str, Any]) -> tuple[Effort | None, int | None]:
    """(reasoning_effort, thinking_budget) from `thinking` and `output_config.effort`."""
    thinking = body.get("thinking")
    config = obj(body.get("output_config"))
    named = config.get("effort")
    effort = EFFORT_FROM_ANTHROPIC.get(named) if isinstance(named, str) else None
    budget = None
    if isinstance(thinking, dict):
        kind = thinking.get("type")
        if kind == "enabled":
            budget = thinking.get("budget_tokens")
            if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
                raise TranslationError("'thinking.budget_tokens' must be a positive integer.",
                                       param="thinking.budget_tokens")
        elif kind == "adaptive":
            effort = effort or "high"  # Anthropic's default effort
        # "disabled": no reasoning asked for (left to the target's default, as Gemini 2.5 Pro
        # refuses a zero budget); output_config.effort still says how much effort to spend.
    return effort, budget


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    config = obj(body.get("output_config"))
    fmt = config.get("format") or body.get("output_format")  # the structured-outputs beta's older name
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
        return {"type": "json_schema", "name": "response", "schema": fmt["schema"], "strict": True}
    return None


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TranslationError(f"'{name}' must be a number.", param=name)
    return value


def decode_request(body: dict[str, Any]) -> ChatRequest:
    """An Anthropic Messages body (checked by proxy.parsing) as the internal representation.

    Translated: system (string or text blocks), system-role messages (leading ones join the
    system prompt, later ones stay in place as IR system messages), text, images (base64,
    url), plain-text documents, search_result blocks (as text), tool_use / tool_result,
    thinking / redacted_thinking (Reasoning, wire "anthropic"), custom tools, tool_choice and
    disable_parallel_tool_use, thinking budget_tokens, adaptive thinking and
    output_config.effort (max and xhigh become high), output_config.format (structured
    output), temperature, top_p, stop_sequences, max_tokens, stream, metadata.user_id.
    Dropped: cache_control, citations, server tool blocks (their text kept), server and
    Anthropic-schema tools, top_k, context_management, service_tier, container, mcp_servers.
    Refused (TranslationError): PDF and file documents, file-sourced images, unknown block
    types, unknown roles, fields of the wrong type.
    """
    system_field = body.get("system")
    system = [] if system_field in (None, "") else [_texts(system_field, "system")]
    messages: list[Message] = []
    for index, raw in enumerate(body["messages"]):
        role, content = raw["role"], raw["content"]
        if role == "system":
            text = _texts(content, f"messages.{index}.content")
            if messages:
                messages.append(Message("system", [Text(text)]))
            else:
                system.append(text)  # before any turn it is simply more system prompt
            continue
        if role not in ("user", "assistant"):
            raise TranslationError(f"'messages.{index}.role' {role!r} cannot be sent to this provider.",
                                   param=f"messages.{index}.role")
        if isinstance(content, str):
            if content or role == "user":
                messages.append(Message(role, [Text(content)]))
            continue
        current: Message | None = None
        for number, block in enumerate(content):
            part, part_role = _part(block, role, f"messages.{index}.content.{number}")
            if part is None or (isinstance(part, Reasoning) and part_role != "assistant"):
                continue
            if current is None or current.role != part_role:
                current = Message(part_role, [])  # type: ignore[arg-type]
                messages.append(current)
            current.parts.append(part)
    fill_tool_result_names(messages)
    tool_choice, parallel = _tool_choice(body.get("tool_choice"))
    effort, budget = _reasoning(body)
    stop = body.get("stop_sequences")
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise TranslationError("'stop_sequences' must be an array of strings.", param="stop_sequences")
    metadata = obj(body.get("metadata"))
    return ChatRequest(
        messages=messages, system=system, tools=_tools(body.get("tools")), tool_choice=tool_choice,
        parallel_tool_calls=parallel, max_tokens=body.get("max_tokens"), temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"), stop=list(stop or []), stream=bool(body.get("stream")),
        user=metadata.get("user_id") if isinstance(metadata.get("user_id"), str) else None,
        reasoning_effort=effort, thinking_budget=budget, response_format=_response_format(body),
    )


# --- Answers out ----------------------------------------------------------------------------


def arguments_object(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def reasoning_block(part: Reasoning) -> dict[str, Any] | None:
    """Anthropic's own reasoning as its block again; other providers' reasoning is not shown.

    A thinking block must carry a signature Anthropic made: one the gateway invented would be
    refused when the agent sends the history back to an Anthropic deployment (same-format calls
    pass bytes through), so another provider's reasoning is left out of Anthropic answers.
    """
    if part.wire != "anthropic" or not part.signature:
        return None
    if part.redacted:
        return {"type": "redacted_thinking", "data": part.signature}
    return {"type": "thinking", "thinking": part.text, "signature": part.signature}


def content_blocks(parts: list[Part]) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, Text):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ToolCall):
            blocks.append({"type": "tool_use", "id": tool_id(part.id), "name": part.name,
                           "input": arguments_object(part.arguments)})
        elif isinstance(part, Reasoning):
            block = reasoning_block(part)
            if block is not None:
                blocks.append(block)
    return blocks


def encode_response(response: ChatResponse) -> dict[str, Any]:
    return {
        "id": response.id, "type": "message", "role": "assistant", "model": response.model,
        "content": content_blocks(response.parts),
        "stop_reason": FINISH_TO_ANTHROPIC[response.finish], "stop_sequence": response.stop_sequence,
        "usage": usage_to_anthropic(response.usage),
    }


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return sse_event(name, orjson.dumps(payload))


class StreamEncoder:
    """Internal stream events in, Anthropic's event sequence out, one event at a time."""

    terminal = _event("message_stop", {"type": "message_stop"})

    def __init__(self, *, model: str = "") -> None:
        self.model = model
        self.started = False
        self.block = -1
        self.open_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}
        self.finish: Finish = "end"
        self.finish_seen = False
        self.stop_sequence: str | None = None
        self.usage = Usage()

    def _start(self, ident: str = "", model: str = "", input_tokens: int | None = None) -> bytes:
        self.started = True
        if input_tokens is not None:
            self.usage.input_tokens = input_tokens
        return _event("message_start", {"type": "message_start", "message": {
            "id": ident or "msg_tollgate", "type": "message", "role": "assistant", "model": model or self.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": usage_to_anthropic(self.usage) | {"output_tokens": 0}}})

    def _close_block(self) -> bytes:
        if self.open_kind is None:
            return b""
        self.open_kind = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close_block()
        self.block += 1
        self.open_kind = kind
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.block,
                                                    "content_block": block})

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        return _event("content_block_delta", {"type": "content_block_delta",
                                              "index": self.block if index is None else index, "delta": delta})

    def _reasoning(self, event: ReasoningDelta) -> bytes:
        if event.wire != "anthropic":
            return b""  # another provider's reasoning: see reasoning_block
        out = b""
        if self.open_kind != "thinking":
            out += self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        if event.text:
            out += self._delta({"type": "thinking_delta", "thinking": event.text})
        if event.signature:
            out += self._delta({"type": "signature_delta", "signature": event.signature})
        return out

    def encode(self, event: StreamEvent) -> bytes:
        if isinstance(event, StreamStart):
            return b"" if self.started else self._start(event.id, event.model, event.input_tokens)
        out = b"" if self.started else self._start()
        if isinstance(event, TextDelta):
            if self.open_kind != "text":
                out += self._open_block("text", {"type": "text", "text": ""})
            return out + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, ReasoningDelta):
            return out + self._reasoning(event)
        if isinstance(event, ToolCallStart):
            out += self._open_block("tool", {"type": "tool_use", "id": tool_id(event.id), "name": event.name,
                                             "input": {}})
            self.tool_blocks[event.index] = self.block
            return out
        if isinstance(event, ToolCallDelta):
            index = self.tool_blocks.get(event.index)
            if index is None:
                return out
            return out + self._delta({"type": "input_json_delta", "partial_json": event.arguments}, index)
        if isinstance(event, StreamFinish):
            self.finish, self.finish_seen, self.stop_sequence = event.finish, True, event.stop_sequence
        elif isinstance(event, StreamUsage):
            if event.input_tokens is not None:
                self.usage.input_tokens = event.input_tokens
            if event.output_tokens is not None:
                self.usage.output_tokens = event.output_tokens
            self.usage.cache_read_tokens = event.cache_read_tokens or self.usage.cache_read_tokens
            self.usage.cache_write_tokens = event.cache_write_tokens or self.usage.cache_write_tokens
            self.usage.cache_write_1h_tokens = event.cache_write_1h_tokens or self.usage.cache_write_1h_tokens
            self.usage.reasoning_tokens = event.reasoning_tokens or self.usage.reasoning_tokens
        return out

    def tail(self) -> bytes:
        """The closing events before `message_stop`: usage is complete only now for some providers."""
        out = (b"" if self.started else self._start()) + self._close_block()
        usage = usage_to_anthropic(self.usage)
        if self.usage.input_tokens is None:
            usage = {"output_tokens": usage["output_tokens"]}
        return out + _event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": FINISH_TO_ANTHROPIC[self.finish], "stop_sequence": self.stop_sequence},
            "usage": usage})

    @staticmethod
    def error_event(message: str, code: str, status: int = 502) -> bytes:
        return _event("error", {"type": "error", "error": {"type": error_type(status), "message": message}})
