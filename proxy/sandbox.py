"""The sandbox provider: a fake model provider that speaks OpenAI, Anthropic and Gemini.

It lets the quickstart, the end-to-end tests, the benchmark and users' own CI run without any
real API key. Replies and token counts are deterministic functions of the request (see
`count_tokens`, `prompt_tokens` and `plan_reply`), so tests can assert exact values.

It is a plain ASGI application with no framework and no Django import: it is the upstream of a
benchmark of thousands of requests per second and thousands of concurrent slow streams, and must
never be the bottleneck. docs/sandbox.md is the user documentation.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Wire = Literal["openai", "anthropic", "gemini"]
Finish = Literal["end", "max_tokens", "stop_sequence", "tool_use"]

REPLY_PREFIX = "Sandbox reply to: "
REPLY_INPUT_CHARS = 200
TOOL_RESULT_PREFIX = "Tool result received: "
TOOL_RESULT_CHARS = 100
MESSAGE_OVERHEAD_TOKENS = 4
# Images, audio and files are not read; each costs a flat amount (OpenAI's low-detail image price).
ATTACHMENT_TOKENS = 85
MODELS = ("sandbox-small", "sandbox-medium", "sandbox-large")
REQUEST_LOG_SIZE = 200
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_CHUNKS = 100_000

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class SandboxConfig:
    """Server-wide knobs. All can be changed at runtime (POST /_sandbox/config) and most per request."""

    latency_ms: int = 0  # delay before the response headers
    chunk_delay_ms: int = 0  # delay between consecutive stream events
    chunks: int = 8  # content events per stream
    fail_status: int | None = None  # answer generation requests with this status and error body
    fail_count: int = 0  # fail only the next N generation requests (0 with fail_status: fail all)
    fail_every: int = 0  # with fail_status: fail one generation request in N (the Nth, 2Nth, ...) and go on
    disconnect_after: int | None = None  # drop stream connections after N events
    hang_ms: int = 0  # sleep before anything else, to provoke client timeouts
    require_key: str | None = None  # accept only this API key (default: any non-empty key)

    def validate(self) -> None:
        """Raise ValueError naming the first knob with a bad value."""
        for name, low, high in (("latency_ms", 0, None), ("chunk_delay_ms", 0, None), ("hang_ms", 0, None),
                                ("chunks", 1, MAX_CHUNKS), ("fail_count", 0, None),
                                ("fail_every", 0, None)):
            _check_int(name, getattr(self, name), low, high)
        if self.fail_status is not None:
            _check_int("fail_status", self.fail_status, 400, 599)
        if self.disconnect_after is not None:
            _check_int("disconnect_after", self.disconnect_after, 0, None)
        if self.require_key is not None and not isinstance(self.require_key, str):
            raise ValueError("require_key must be a string or null")

    def merged(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """A validated copy with `changes` applied; unknown names are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        new = dataclasses.replace(self, **changes)
        if new.require_key == "":
            new.require_key = None
        new.validate()
        return new


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(name: str, value: Any, low: int, high: int | None) -> None:
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}")


# --------------------------------------------------------------------------------------------
# The deterministic model: request -> conversation -> reply and usage


class SandboxRequestError(ValueError):
    """The request body is invalid; `param` names the offending field as the OpenAI API does."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Turn:
    """One non-system message, reduced to what the reply and the token count need."""

    role: Literal["user", "assistant", "tool"]
    pieces: list[str] = field(default_factory=list)  # every counted text: text, tool arguments, results
    attachments: int = 0  # images, audio, files
    texts: list[str] = field(default_factory=list)  # plain text parts only (the reply quotes them)
    tool_result: str | None = None  # text of the last tool result in this message


@dataclass
class ToolDef:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass
class Conversation:
    """A request of any of the three formats in one form."""

    model: str
    system: list[str]
    turns: list[Turn]
    tools: list[ToolDef]
    tool_mode: Literal["auto", "none", "required"] = "auto"
    tool_name: str | None = None  # a tool forced by tool_choice
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False  # OpenAI stream_options.include_usage


@dataclass(frozen=True)
class Reply:
    """What the sandbox answers: either text or one tool call, why it stopped, and the usage."""

    text: str | None
    tool_name: str | None
    tool_arguments: dict[str, Any] | None
    arguments_json: str | None
    finish: Finish
    stop_sequence: str | None
    usage: Usage


def count_tokens(text: str) -> int:
    """max(1, ceil(utf8_bytes / 4)): the usual 4-bytes-per-token rule of thumb, exact and cheap."""
    return max(1, (len(text.encode("utf-8")) + 3) // 4)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys: the same arguments count the same in every wire format."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def tools_json(tools: list[ToolDef]) -> str:
    """The tool definitions as counted: [{"description","name","parameters"}] in canonical JSON."""
    return canonical_json([{"name": t.name, "description": t.description, "parameters": t.parameters}
                           for t in tools])


def prompt_tokens(conv: Conversation) -> int:
    """count_tokens of each system text
    + for each other message: 4 + count_tokens of each non-empty text piece (text parts, tool
      names, tool-call arguments as canonical JSON, tool results) + 85 per image/audio/file part
    + count_tokens(tools_json(tools)) when the request defines tools.
    """
    total = sum(count_tokens(t) for t in conv.system)
    for turn in conv.turns:
        total += MESSAGE_OVERHEAD_TOKENS + ATTACHMENT_TOKENS * turn.attachments
        total += sum(count_tokens(p) for p in turn.pieces)
    if conv.tools:
        total += count_tokens(tools_json(conv.tools))
    return total


def sample_value(schema: Any) -> Any:
    """A simple value of a JSON schema's type: the first enum value, or "sandbox", 1, true, {}, []."""
    if not isinstance(schema, dict):
        return "sandbox"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        for combinator in ("anyOf", "oneOf"):
            if isinstance(schema.get(combinator), list) and schema[combinator]:
                return sample_value(schema[combinator][0])
    # Gemini writes types in upper case (STRING, OBJECT).
    kind = kind.lower() if isinstance(kind, str) else "string"
    return {"string": "sandbox", "number": 1, "integer": 1, "boolean": True, "object": {}, "array": [],
            "null": None}.get(kind, "sandbox")


def sample_arguments(schema: Any) -> dict[str, Any]:
    """Tool-call arguments: each *required* property of the schema with `sample_value`."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    return {name: sample_value(properties.get(name)) for name in required if isinstance(name, str)}


def plan_reply(conv: Conversation) -> Reply:
    """The deterministic answer to a conversation.

    1. Last message is a tool result -> text "Tool result received: " + its first 100 characters.
    2. Else, tools defined and tool choice is not none -> one call to the forced tool, else the
       first tool, with `sample_arguments` of its schema; finish "tool_use". Completion tokens =
       count_tokens(canonical JSON of the arguments), capped at max_tokens; never truncated.
    3. Else text "Sandbox reply to: " + the first 200 characters of the last user message's text.
    Text is cut before the earliest stop sequence (finish "stop_sequence"), then, if
    count_tokens(text) > max_tokens, to its first max_tokens*4 bytes on a character boundary
    (finish "max_tokens", completion tokens = max_tokens). Otherwise completion tokens =
    count_tokens(text) and finish "end".
    """
    prompt = prompt_tokens(conv)
    last = conv.turns[-1] if conv.turns else None
    if last is not None and last.tool_result is not None:
        text = TOOL_RESULT_PREFIX + last.tool_result[:TOOL_RESULT_CHARS]
    elif conv.tools and conv.tool_mode != "none":
        tool = conv.tools[0]
        if conv.tool_name is not None:
            tool = next(t for t in conv.tools if t.name == conv.tool_name)
        arguments = sample_arguments(tool.parameters)
        arguments_json = canonical_json(arguments)
        completion = count_tokens(arguments_json)
        if conv.max_tokens is not None:
            completion = min(completion, conv.max_tokens)
        return Reply(None, tool.name, arguments, arguments_json, "tool_use", None, Usage(prompt, completion))
    else:
        text = REPLY_PREFIX + _last_user_text(conv)[:REPLY_INPUT_CHARS]

    finish: Finish = "end"
    stop_sequence = None
    found = min(((text.find(s), i, s) for i, s in enumerate(conv.stop) if s and s in text), default=None)
    if found is not None:
        text, finish, stop_sequence = text[:found[0]], "stop_sequence", found[2]
    completion = count_tokens(text)
    if conv.max_tokens is not None and completion > conv.max_tokens:
        text = text.encode("utf-8")[: conv.max_tokens * 4].decode("utf-8", "ignore")
        finish, stop_sequence, completion = "max_tokens", None, conv.max_tokens
    return Reply(text, None, None, None, finish, stop_sequence, Usage(prompt, completion))


def _last_user_text(conv: Conversation) -> str:
    for turn in reversed(conv.turns):
        if turn.role == "user" and turn.texts:
            return "\n".join(turn.texts)
    return ""


def split_chunks(text: str, n: int) -> list[str]:
    """Exactly n pieces of nearly equal length (some empty when the text is shorter than n)."""
    size = len(text)
    return [text[i * size // n:(i + 1) * size // n] for i in range(n)]


def parse_request(wire: Wire, body: Any, *, model: str = "", count_only: bool = False) -> Conversation:
    """Validate a request body of `wire` format and reduce it to a Conversation.

    Gemini carries the model in the URL: pass it as `model`. `count_only` parses a token-counting
    request (Anthropic count_tokens needs no max_tokens). Raises SandboxRequestError.
    """
    if not isinstance(body, dict):
        raise SandboxRequestError("The request body must be a JSON object.")
    if wire == "openai":
        return _parse_openai(body)
    if wire == "anthropic":
        return _parse_anthropic(body, count_only=count_only)
    return _parse_gemini(body, model)


def expected_usage(wire: Wire, body: Any, *, model: str = "") -> Usage:
    """The usage the sandbox reports for this request body (stream and non-stream alike)."""
    return plan_reply(parse_request(wire, body, model=model)).usage


def _string(value: Any, param: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise SandboxRequestError(f"'{param}' must be a non-empty string.", param)
    return value


def _number(value: Any, param: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise SandboxRequestError(f"'{param}' must be a number.", param)


def _positive_int(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if not _is_int(value) or value < 1:
        raise SandboxRequestError(f"'{param}' must be an integer >= 1.", param)
    return value


def _boolean(value: Any, param: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SandboxRequestError(f"'{param}' must be a boolean.", param)
    return value


def _string_list(value: Any, param: str, *, allow_string: bool = False) -> list[str]:
    if value is None:
        return []
    if allow_string and isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise SandboxRequestError(f"'{param}' must be a list of strings.", param)
    return value


def _object(value: Any, param: str) -> dict:
    if not isinstance(value, dict):
        raise SandboxRequestError(f"'{param}' must be an object.", param)
    return value


def _list(value: Any, param: str, *, non_empty: bool = False) -> list:
    if not isinstance(value, list) or (non_empty and not value):
        qualifier = "a non-empty" if non_empty else "an"
        raise SandboxRequestError(f"'{param}' must be {qualifier} array.", param)
    return value


def _add_text(turn: Turn, text: str) -> None:
    if text:
        turn.pieces.append(text)
        turn.texts.append(text)


def _add_call(turn: Turn, name: str, arguments: str) -> None:
    turn.pieces.extend(p for p in (name, arguments) if p)


def _add_result(turn: Turn, texts: list[str]) -> None:
    turn.pieces.extend(t for t in texts if t)
    turn.tool_result = "\n".join(texts)


def _check_tool_name(conv: Conversation, param: str) -> Conversation:
    if conv.tool_name is not None and all(t.name != conv.tool_name for t in conv.tools):
        raise SandboxRequestError(f"'{param}' names a tool that is not defined: {conv.tool_name!r}.", param)
    return conv


# OpenAI Chat Completions


def _parse_openai(body: dict) -> Conversation:
    model = _string(body.get("model"), "model", required=True)
    messages = _list(body.get("messages"), "messages", non_empty=True)
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        _number(body.get(key), key)
    _positive_int(body.get("n"), "n")
    stream = _boolean(body.get("stream"), "stream")
    include_usage = False
    if body.get("stream_options") is not None:
        options = _object(body["stream_options"], "stream_options")
        include_usage = _boolean(options.get("include_usage"), "stream_options.include_usage")
    max_tokens = _positive_int(body.get("max_completion_tokens"), "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _positive_int(body.get("max_tokens"), "max_tokens")

    system: list[str] = []
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        _object(message, param)
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(t for t in _openai_texts(content, f"{param}.content") if t)
        elif role in ("user", "assistant"):
            turn = Turn(role)
            _openai_content(turn, content, f"{param}.content")
            if role == "assistant" and message.get("tool_calls") is not None:
                for j, call in enumerate(_list(message["tool_calls"], f"{param}.tool_calls")):
                    function = _object(_object(call, f"{param}.tool_calls[{j}]").get("function"),
                                       f"{param}.tool_calls[{j}].function")
                    name = _string(function.get("name"), f"{param}.tool_calls[{j}].function.name") or ""
                    arguments = function.get("arguments") or ""
                    if not isinstance(arguments, str):
                        raise SandboxRequestError("Tool call arguments must be a JSON string.",
                                                  f"{param}.tool_calls[{j}].function.arguments")
                    _add_call(turn, name, _canonical_arguments(arguments))
            turns.append(turn)
        elif role in ("tool", "function"):
            turn = Turn("tool")
            _add_result(turn, _openai_texts(content, f"{param}.content"))
            turns.append(turn)
        else:
            raise SandboxRequestError(f"Invalid role {role!r}.", f"{param}.role")

    conv = Conversation(model=model or "", system=system, turns=turns, tools=[], max_tokens=max_tokens,
                        stop=_string_list(body.get("stop"), "stop", allow_string=True), stream=stream,
                        include_usage=include_usage)
    if body.get("tools") is not None:
        for i, tool in enumerate(_list(body["tools"], "tools")):
            _object(tool, f"tools[{i}]")
            if tool.get("type", "function") != "function":
                continue  # custom and built-in tools are not simulated
            function = _object(tool.get("function"), f"tools[{i}].function")
            conv.tools.append(ToolDef(_string(function.get("name"), f"tools[{i}].function.name", required=True) or "",
                                      function.get("description") or "", function.get("parameters") or {}))
    choice = body.get("tool_choice")
    if choice in ("none", "auto", "required"):
        conv.tool_mode = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        function = _object(choice.get("function"), "tool_choice.function")
        conv.tool_name = _string(function.get("name"), "tool_choice.function.name", required=True)
    elif choice is not None and not isinstance(choice, dict):
        raise SandboxRequestError("'tool_choice' must be none, auto, required or an object.", "tool_choice")
    return _check_tool_name(conv, "tool_choice")


def _content_type_error(param: str) -> SandboxRequestError:
    return SandboxRequestError(f"'{param}' must be a string or an array of content parts.", param)


def _openai_texts(content: Any, param: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise _content_type_error(param)
    return [part.get("text") or "" for part in _list(content, param)
            if _object(part, param).get("type") == "text"]


def _openai_content(turn: Turn, content: Any, param: str) -> None:
    if content is None:
        return
    if isinstance(content, str):
        _add_text(turn, content)
        return
    if not isinstance(content, list):
        raise _content_type_error(param)
    for j, part in enumerate(content):
        kind = _object(part, f"{param}[{j}]").get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise SandboxRequestError("A text part needs a string 'text'.", f"{param}[{j}].text")
            _add_text(turn, text)
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            turn.pieces.append(part["refusal"])
        elif kind in ("image_url", "input_audio", "file"):
            turn.attachments += 1


def _canonical_arguments(arguments: str) -> str:
    try:
        return canonical_json(orjson.loads(arguments))
    except orjson.JSONDecodeError:
        return arguments


# Anthropic Messages


def _parse_anthropic(body: dict, *, count_only: bool) -> Conversation:
    model = _string(body.get("model"), "model", required=True)
    max_tokens = _positive_int(body.get("max_tokens"), "max_tokens")
    if max_tokens is None and not count_only:
        raise SandboxRequestError("max_tokens: Field required", "max_tokens")
    messages = _list(body.get("messages"), "messages", non_empty=True)
    for key in ("temperature", "top_p"):
        _number(body.get(key), key)
    _positive_int(body.get("top_k"), "top_k")
    stream = _boolean(body.get("stream"), "stream")

    system: list[str] = []
    raw_system = body.get("system")
    if isinstance(raw_system, str):
        system = [raw_system] if raw_system else []
    elif raw_system is not None:
        for i, block in enumerate(_list(raw_system, "system")):
            text = _object(block, f"system[{i}]").get("text")
            if block.get("type") != "text" or not isinstance(text, str):
                raise SandboxRequestError("System blocks must be text blocks.", f"system[{i}]")
            if text:
                system.append(text)

    turns: list[Turn] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        role = _object(message, param).get("role")
        if role not in ("user", "assistant"):
            raise SandboxRequestError(f"Invalid role {role!r}: use 'user' or 'assistant'.", f"{param}.role")
        turn = Turn(role)
        content = message.get("content")
        if isinstance(content, str):
            _add_text(turn, content)
        elif not isinstance(content, list):
            raise _content_type_error(f"{param}.content")
        else:
            for j, block in enumerate(content):
                _anthropic_block(turn, _object(block, f"{param}.content[{j}]"), f"{param}.content[{j}]")
        turns.append(turn)

    conv = Conversation(model=model or "", system=system, turns=turns, tools=[], max_tokens=max_tokens,
                        stop=_string_list(body.get("stop_sequences"), "stop_sequences"), stream=stream)
    if body.get("tools") is not None:
        for i, tool in enumerate(_list(body["tools"], "tools")):
            _object(tool, f"tools[{i}]")
            schema = tool.get("input_schema") or {}
            conv.tools.append(ToolDef(_string(tool.get("name"), f"tools[{i}].name", required=True) or "",
                                      tool.get("description") or "", _object(schema, f"tools[{i}].input_schema")))
    if body.get("tool_choice") is not None:
        choice = _object(body["tool_choice"], "tool_choice")
        kind = choice.get("type")
        if kind == "none":
            conv.tool_mode = "none"
        elif kind == "any":
            conv.tool_mode = "required"
        elif kind == "tool":
            conv.tool_name = _string(choice.get("name"), "tool_choice.name", required=True)
        elif kind != "auto":
            raise SandboxRequestError("tool_choice.type must be auto, any, tool or none.", "tool_choice.type")
    return _check_tool_name(conv, "tool_choice")


def _anthropic_block(turn: Turn, block: dict, param: str) -> None:
    kind = block.get("type")
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise SandboxRequestError("A text block needs a string 'text'.", f"{param}.text")
        _add_text(turn, text)
    elif kind in ("image", "document"):
        turn.attachments += 1
    elif kind == "tool_use":
        name = _string(block.get("name"), f"{param}.name") or ""
        _add_call(turn, name, canonical_json(block.get("input") or {}))
    elif kind == "tool_result":
        content = block.get("content")
        if content is None or isinstance(content, str):
            _add_result(turn, [content or ""])
        else:
            texts = []
            for item in _list(content, f"{param}.content"):
                if _object(item, f"{param}.content").get("type") == "text":
                    texts.append(item.get("text") or "")
                elif item.get("type") in ("image", "document"):
                    turn.attachments += 1
            _add_result(turn, texts)
    elif kind == "thinking" and isinstance(block.get("thinking"), str):
        turn.pieces.append(block["thinking"])


# Gemini generateContent


def _camel(body: dict, camel: str, snake: str) -> Any:
    # The REST API accepts both spellings of every field (protobuf JSON mapping).
    value = body.get(camel)
    return body.get(snake) if value is None else value


def _parse_gemini(body: dict, model: str) -> Conversation:
    contents = _list(body.get("contents"), "contents", non_empty=True)
    system: list[str] = []
    instruction = _camel(body, "systemInstruction", "system_instruction")
    if isinstance(instruction, str):
        system = [instruction] if instruction else []
    elif instruction is not None:
        parts = _list(_object(instruction, "systemInstruction").get("parts"), "systemInstruction.parts")
        system = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"]]

    turns: list[Turn] = []
    for i, content in enumerate(contents):
        param = f"contents[{i}]"
        role = _object(content, param).get("role") or "user"
        if role not in ("user", "model", "function"):
            raise SandboxRequestError(f"Invalid role {role!r}: use 'user' or 'model'.", f"{param}.role")
        turn = Turn("assistant" if role == "model" else "user")
        for j, part in enumerate(_list(content.get("parts"), f"{param}.parts")):
            _gemini_part(turn, _object(part, f"{param}.parts[{j}]"), f"{param}.parts[{j}]")
        turns.append(turn)

    config = _camel(body, "generationConfig", "generation_config") or {}
    _object(config, "generationConfig")
    _number(config.get("temperature"), "generationConfig.temperature")
    max_tokens = _positive_int(_camel(config, "maxOutputTokens", "max_output_tokens"),
                               "generationConfig.maxOutputTokens")
    stop = _string_list(_camel(config, "stopSequences", "stop_sequences"), "generationConfig.stopSequences")
    conv = Conversation(model=model, system=system, turns=turns, tools=[], max_tokens=max_tokens, stop=stop)

    tools = body.get("tools")
    if tools is not None:
        for i, tool in enumerate(_list(tools, "tools")):
            declarations = _camel(_object(tool, f"tools[{i}]"), "functionDeclarations", "function_declarations")
            for j, declaration in enumerate(_list(declarations or [], f"tools[{i}].functionDeclarations")):
                param = f"tools[{i}].functionDeclarations[{j}]"
                _object(declaration, param)
                schema = declaration.get("parameters") or _camel(
                    declaration, "parametersJsonSchema", "parameters_json_schema") or {}
                conv.tools.append(ToolDef(_string(declaration.get("name"), f"{param}.name", required=True) or "",
                                          declaration.get("description") or "", _object(schema, param)))
    tool_config = _camel(body, "toolConfig", "tool_config")
    if tool_config is not None:
        calling = _camel(_object(tool_config, "toolConfig"), "functionCallingConfig", "function_calling_config")
        calling = _object(calling or {}, "toolConfig.functionCallingConfig")
        mode = calling.get("mode") or "AUTO"
        if mode == "NONE":
            conv.tool_mode = "none"
        elif mode in ("ANY", "VALIDATED"):
            conv.tool_mode = "required"
        allowed = _string_list(_camel(calling, "allowedFunctionNames", "allowed_function_names"),
                               "toolConfig.functionCallingConfig.allowedFunctionNames")
        if allowed and conv.tool_mode != "none":
            conv.tool_name = allowed[0]
    return _check_tool_name(conv, "toolConfig.functionCallingConfig.allowedFunctionNames")


def _gemini_part(turn: Turn, part: dict, param: str) -> None:
    if "text" in part:
        if not isinstance(part["text"], str):
            raise SandboxRequestError("A text part needs a string.", f"{param}.text")
        _add_text(turn, part["text"])
        return
    call = _camel(part, "functionCall", "function_call")
    response = _camel(part, "functionResponse", "function_response")
    if call is not None:
        _object(call, f"{param}.functionCall")
        _add_call(turn, _string(call.get("name"), f"{param}.functionCall.name") or "",
                  canonical_json(call.get("args") or {}))
    elif response is not None:
        _object(response, f"{param}.functionResponse")
        _add_result(turn, [_function_response_text(response.get("response"))])
    elif _camel(part, "inlineData", "inline_data") is not None or _camel(part, "fileData", "file_data") is not None:
        turn.attachments += 1


def _function_response_text(response: Any) -> str:
    """{"result"|"content"|"output": "<text>"} counts as that text, like an OpenAI tool message."""
    if isinstance(response, dict) and len(response) == 1:
        ((key, value),) = response.items()
        if key in ("result", "content", "output") and isinstance(value, str):
            return value
    return canonical_json(response if response is not None else {})


# --------------------------------------------------------------------------------------------
# Wire shapes: responses, stream events, errors

_OPENAI_FINISH = {"end": "stop", "max_tokens": "length", "stop_sequence": "stop", "tool_use": "tool_calls"}
_ANTHROPIC_STOP = {"end": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence",
                   "tool_use": "tool_use"}
_GEMINI_FINISH = {"end": "STOP", "max_tokens": "MAX_TOKENS", "stop_sequence": "STOP", "tool_use": "STOP"}


def _openai_usage(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def _openai_completion(conv: Conversation, reply: Reply, ident: str, created: int) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_name is not None:
        message["tool_calls"] = [{"id": f"call_{ident}", "type": "function",
                                  "function": {"name": reply.tool_name, "arguments": reply.arguments_json}}]
    return {"id": f"chatcmpl-{ident}", "object": "chat.completion", "created": created, "model": conv.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": _OPENAI_FINISH[reply.finish]}],
            "usage": _openai_usage(reply.usage)}


def _openai_events(conv: Conversation, reply: Reply, ident: str, created: int, chunks: int) -> Iterator[bytes]:
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
    yield chunk({}, _OPENAI_FINISH[reply.finish])
    if conv.include_usage:
        yield b"data: " + orjson.dumps({**base, "choices": [], "usage": _openai_usage(reply.usage)}) + b"\n\n"
    yield b"data: [DONE]\n\n"


def _anthropic_content(reply: Reply, ident: str) -> dict:
    if reply.tool_name is not None:
        return {"type": "tool_use", "id": f"toolu_{ident}", "name": reply.tool_name, "input": reply.tool_arguments}
    return {"type": "text", "text": reply.text}


def _anthropic_message(conv: Conversation, reply: Reply, ident: str) -> dict:
    return {"id": f"msg_{ident}", "type": "message", "role": "assistant", "model": conv.model,
            "content": [_anthropic_content(reply, ident)], "stop_reason": _ANTHROPIC_STOP[reply.finish],
            "stop_sequence": reply.stop_sequence,
            "usage": {"input_tokens": reply.usage.prompt_tokens, "output_tokens": reply.usage.completion_tokens}}


def _anthropic_events(conv: Conversation, reply: Reply, ident: str, chunks: int) -> Iterator[bytes]:
    def event(name: bytes, data: dict) -> bytes:
        return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    yield event(b"message_start", {"type": "message_start", "message": {
        "id": f"msg_{ident}", "type": "message", "role": "assistant", "model": conv.model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": reply.usage.prompt_tokens, "output_tokens": 1}}})
    if reply.tool_name is not None:
        block = {**_anthropic_content(reply, ident), "input": {}}
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
                                   "delta": {"stop_reason": _ANTHROPIC_STOP[reply.finish],
                                             "stop_sequence": reply.stop_sequence},
                                   "usage": {"output_tokens": reply.usage.completion_tokens}})
    yield event(b"message_stop", {"type": "message_stop"})


def _gemini_usage(usage: Usage) -> dict[str, int]:
    return {"promptTokenCount": usage.prompt_tokens, "candidatesTokenCount": usage.completion_tokens,
            "totalTokenCount": usage.total_tokens}


def _gemini_chunk(conv: Conversation, ident: str, part: dict, reply: Reply | None) -> dict:
    """One GenerateContentResponse; `reply` is given for the last one (finishReason and usage)."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": [part]}, "index": 0}
    response: dict[str, Any] = {"candidates": [candidate]}
    if reply is not None:
        candidate["finishReason"] = _GEMINI_FINISH[reply.finish]
        response["usageMetadata"] = _gemini_usage(reply.usage)
    response["modelVersion"] = conv.model
    response["responseId"] = ident
    return response


def _gemini_part_of(reply: Reply) -> dict:
    if reply.tool_name is not None:
        return {"functionCall": {"name": reply.tool_name, "args": reply.tool_arguments}}
    return {"text": reply.text}


def _gemini_events(conv: Conversation, reply: Reply, ident: str, chunks: int, sse: bool) -> Iterator[bytes]:
    # A function call cannot be split: Gemini sends it whole, in the one and last event.
    if reply.tool_name is not None:
        parts = [_gemini_part_of(reply)]
    else:
        parts = [{"text": p} for p in split_chunks(reply.text or "", chunks)]
    last = len(parts) - 1
    for i, part in enumerate(parts):
        data = orjson.dumps(_gemini_chunk(conv, ident, part, reply if i == last else None))
        if sse:
            # The real API ends SSE events with CRLF pairs; gateways must parse SSE by the spec.
            yield b"data: " + data + b"\r\n\r\n"
        else:
            # Without alt=sse the API streams one JSON array, element by element.
            yield (b"[" if i == 0 else b",\r\n") + data + (b"]" if i == last else b"")


_OPENAI_ERROR_TYPES = {401: ("invalid_request_error", "invalid_api_key"),
                       403: ("invalid_request_error", "permission_denied"),
                       404: ("invalid_request_error", None),
                       429: ("requests", "rate_limit_exceeded")}
_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                          404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                          529: "overloaded_error"}
_GEMINI_STATUSES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                    404: "NOT_FOUND", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                    500: "INTERNAL", 501: "NOT_IMPLEMENTED", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
                    529: "UNAVAILABLE"}
_RETRY_AFTER_STATUSES = frozenset({429, 503, 529})


def error_body(wire: Wire, status: int, message: str, param: str | None = None) -> dict:
    """The error object each API sends with `status`."""
    if wire == "anthropic":
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if wire == "gemini":
        name = _GEMINI_STATUSES.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
        return {"error": {"code": status, "message": message, "status": name}}
    kind, code = _OPENAI_ERROR_TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error",
                                                  None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _simulated_failure_message(status: int) -> str:
    what = {429: "rate limit reached", 500: "internal server error", 502: "bad gateway",
            503: "service unavailable", 504: "gateway timeout", 529: "overloaded"}.get(status, "error")
    return f"Sandbox: simulated {what} (status {status})."


# --------------------------------------------------------------------------------------------
# The ASGI application


class SandboxDisconnect(Exception):
    """Raised inside a stream so that the server drops the connection mid-body (disconnect_after)."""


class _HideSandboxDisconnect(logging.Filter):
    """The server logs every exception of an app with a traceback; ours are on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SandboxDisconnect))


def _quiet_disconnect_logs() -> None:
    server_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideSandboxDisconnect) for f in server_logger.filters):
        server_logger.addFilter(_HideSandboxDisconnect())


class _ClientGone(Exception):
    pass


class _BodyTooLarge(Exception):
    pass


@dataclass(slots=True)
class _Knobs:
    latency_ms: int
    chunk_delay_ms: int
    chunks: int
    fail_status: int | None  # 0 = explicitly no failure for this request
    disconnect_after: int | None
    hang_ms: int


_OVERRIDE_HEADERS = (("x-sandbox-latency-ms", "latency_ms", 0, None),
                     ("x-sandbox-chunk-delay-ms", "chunk_delay_ms", 0, None),
                     ("x-sandbox-chunks", "chunks", 1, MAX_CHUNKS),
                     ("x-sandbox-fail-status", "fail_status", 0, 599),
                     ("x-sandbox-disconnect-after", "disconnect_after", 0, None),
                     ("x-sandbox-hang-ms", "hang_ms", 0, None))

_GEMINI_PATH = re.compile(r"^/(?:v1beta|v1)/models/([^/:]+):(generateContent|streamGenerateContent|countTokens)$")
_GENERATION_ACTIONS = frozenset({"chat", "messages", "generateContent", "streamGenerateContent"})
_JSON = b"application/json"
_SSE = b"text/event-stream; charset=utf-8"
_INVALID = object()


def _route(path: str, headers: dict[str, str]) -> tuple[Wire, str | None, str, str]:
    """(wire format, action, model from the URL, allowed method); action None: unknown path."""
    if path == "/v1/chat/completions":
        return "openai", "chat", "", "POST"
    if path == "/v1/messages":
        return "anthropic", "messages", "", "POST"
    if path == "/v1/messages/count_tokens":
        return "anthropic", "count_tokens", "", "POST"
    if path == "/v1/models":
        # Both SDKs list models at this path; the Anthropic one always sends anthropic-version.
        return ("anthropic" if "anthropic-version" in headers else "openai"), "models", "", "GET"
    if path == "/v1beta/models":
        return "gemini", "models", "", "GET"
    match = _GEMINI_PATH.match(path)
    if match:
        return "gemini", match.group(2), match.group(1), "POST"
    if path.startswith("/v1beta/"):
        return "gemini", None, "", ""
    if "anthropic-version" in headers or "x-api-key" in headers:
        return "anthropic", None, "", ""
    return "openai", None, "", ""


def _api_key(wire: Wire, headers: dict[str, str], query: dict[str, str]) -> str:
    if wire == "gemini":
        return headers.get("x-goog-api-key") or query.get("key") or ""
    if wire == "anthropic" and headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGone
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        part = message.get("body", b"")
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLarge
        parts.append(part)
        if not message.get("more_body"):
            return b"".join(parts)


async def _send_json(send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, wire: Wire, status: int, message: str, param: str | None = None) -> None:
    extra = [(b"retry-after", b"1")] if status in _RETRY_AFTER_STATUSES else None
    await _send_json(send, status, error_body(wire, status, message, param), extra)


class SandboxApp:
    """The ASGI callable. `config` is the live configuration; `reset()` restores the startup one."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        startup = config or SandboxConfig()
        startup.validate()
        self.startup_config = dataclasses.replace(startup)
        self.config = dataclasses.replace(startup)
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.total = 0
        self.by_path: dict[str, int] = {}
        self.by_status: dict[str, int] = {}
        self.client_disconnects = 0  # streams whose client went away before the end
        self.generations = 0  # generation requests that met a server-wide failure setting (fail_every)

    def reset(self) -> None:
        self.config = dataclasses.replace(self.startup_config)
        self.generations = 0
        self.requests.clear()
        self.total = 0
        self.by_path.clear()
        self.by_status.clear()
        self.client_disconnects = 0

    def stats(self) -> dict[str, Any]:
        return {"requests": self.total, "by_path": dict(self.by_path), "by_status": dict(self.by_status),
                "client_disconnects": self.client_disconnects}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            # None of the three APIs is a websocket; closing before accept is a 403.
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith("/_sandbox/"):
            try:
                await self._control(scope, receive, send, path)
            except _ClientGone:
                pass
            return
        status = 0

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        wire: Wire = "openai"
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            wire = _route(path, headers)[0]
            await self._api(scope, receive, tracked, path, headers)
        except _ClientGone:
            pass  # nobody is left to answer
        except SandboxDisconnect:
            raise  # the server drops the connection: that is the point
        except Exception:
            # A bug of the sandbox must still look like the API it imitates.
            logger.exception("sandbox failed on %s %s", scope["method"], path)
            if status == 0:
                await _send_error(tracked, wire, 500, "Sandbox: internal error (a bug in the sandbox).")
        finally:
            self.total += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1
            key = str(status)
            self.by_status[key] = self.by_status.get(key, 0) + 1

    async def _api(self, scope: Scope, receive: Receive, send: Send, path: str, headers: dict[str, str]) -> None:
        wire, action, model, method = _route(path, headers)
        query_string = scope.get("query_string", b"")
        query = dict(parse_qsl(query_string.decode("latin-1"))) if query_string else {}
        too_large = False
        try:
            raw = await _read_body(receive)
        except _BodyTooLarge:
            raw, too_large = b"", True
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = _INVALID
        self.requests.append({"method": scope["method"], "path": path, "query": query, "headers": headers,
                              "body": None if body is _INVALID else body})

        try:
            knobs = self._knobs(headers)
        except ValueError as exc:
            await _send_error(send, wire, 400, str(exc))
            return
        if knobs.hang_ms:
            await asyncio.sleep(knobs.hang_ms / 1000)
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000)

        if action is None:
            await _send_error(send, wire, 404, f"Sandbox: no such endpoint: {scope['method']} {path}.")
            return
        if scope["method"] != method:
            await _send_error(send, wire, 405, f"Sandbox: {path} only accepts {method}.")
            return
        key = _api_key(wire, headers, query)
        if not key:
            await _send_error(send, wire, 401, "Sandbox: missing API key.")
            return
        required = self.config.require_key
        if required is not None and not secrets.compare_digest(key.encode(), required.encode()):
            await _send_error(send, wire, 401, "Sandbox: invalid API key (the sandbox runs with --require-key).")
            return
        if action in _GENERATION_ACTIONS:
            failure = self._take_failure(knobs.fail_status)
            if failure:
                await _send_error(send, wire, failure, _simulated_failure_message(failure))
                return
        if action == "models":
            await _send_json(send, 200, _models_list(wire))
            return
        if wire == "anthropic" and "anthropic-version" not in headers:
            # The real API refuses requests without it; a gateway that forgets it must find out here.
            await _send_error(send, wire, 400, "anthropic-version: header is required")
            return
        if too_large:
            await _send_error(send, wire, 413, f"Sandbox: request body over the {MAX_BODY_BYTES} bytes limit.")
            return
        if body is None or body is _INVALID:
            await _send_error(send, wire, 400, "The request body is not valid JSON.")
            return
        if wire == "gemini" and action == "countTokens" and isinstance(body, dict) \
                and isinstance(body.get("generateContentRequest"), dict):
            body = body["generateContentRequest"]
        try:
            conv = parse_request(wire, body, model=model, count_only=action in ("count_tokens", "countTokens"))
        except SandboxRequestError as exc:
            await _send_error(send, wire, 400, exc.message, exc.param)
            return

        if action == "count_tokens":
            await _send_json(send, 200, {"input_tokens": prompt_tokens(conv)})
            return
        if action == "countTokens":
            await _send_json(send, 200, {"totalTokens": prompt_tokens(conv)})
            return
        reply = plan_reply(conv)
        # Ids derive from the request so that the same request gets the same answer, byte for byte
        # (OpenAI's `created` timestamp aside).
        ident = hashlib.blake2b(path.encode() + b"\0" + raw, digest_size=12).hexdigest()
        if wire == "openai":
            created = int(time.time())
            if conv.stream:
                await self._stream(receive, send, _openai_events(conv, reply, ident, created, knobs.chunks),
                                   knobs, _SSE)
            else:
                await _send_json(send, 200, _openai_completion(conv, reply, ident, created))
        elif wire == "anthropic":
            if conv.stream:
                await self._stream(receive, send, _anthropic_events(conv, reply, ident, knobs.chunks), knobs, _SSE)
            else:
                await _send_json(send, 200, _anthropic_message(conv, reply, ident))
        elif action == "streamGenerateContent":
            sse = query.get("alt") == "sse"
            await self._stream(receive, send, _gemini_events(conv, reply, ident, knobs.chunks, sse), knobs,
                               _SSE if sse else _JSON)
        else:
            await _send_json(send, 200, _gemini_chunk(conv, ident, _gemini_part_of(reply), reply))

    def _knobs(self, headers: dict[str, str]) -> _Knobs:
        config = self.config
        knobs = _Knobs(config.latency_ms, config.chunk_delay_ms, config.chunks, None, config.disconnect_after,
                       config.hang_ms)
        for header, name, low, high in _OVERRIDE_HEADERS:
            value = headers.get(header)
            if value is None:
                continue
            try:
                number = int(value)
            except ValueError:
                number = -1
            if number < low or (high is not None and number > high) or (name == "fail_status" and 0 < number < 400):
                bound = f"between {low} and {high}" if high is not None else f">= {low}"
                raise ValueError(f"Sandbox: header {header} must be an integer {bound}, got {value!r}.")
            setattr(knobs, name, number)
        return knobs

    def _take_failure(self, override: int | None) -> int:
        """The status to fail this generation request with, or 0; counts fail_count down."""
        if override is not None:
            return override
        config = self.config
        status = config.fail_status
        if status is None:
            return 0
        if config.fail_every > 0:
            self.generations += 1
            return status if self.generations % config.fail_every == 0 else 0
        if config.fail_count > 0:
            config.fail_count -= 1
            if config.fail_count == 0:
                config.fail_status = None  # the last of the N failures: recover from the next request
        return status

    async def _stream(self, receive: Receive, send: Send, events: Iterator[bytes], knobs: _Knobs,
                      content_type: bytes) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")]})
        delay = knobs.chunk_delay_ms / 1000
        cut = knobs.disconnect_after
        if not delay and cut is None:
            # Without a delay the client cannot tell one write from many, and one write per event
            # (one syscall each) would make the sandbox the benchmark's bottleneck.
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
            return
        # A slow stream can outlive its client; watching for the disconnect ends it early instead of
        # sleeping to the end (the benchmark keeps thousands of them open).
        gone = asyncio.ensure_future(receive()) if delay else None
        try:
            for index, event in enumerate(events):
                if index == cut:
                    _quiet_disconnect_logs()
                    raise SandboxDisconnect(f"disconnect_after={cut}")
                if gone is not None and index:
                    await asyncio.sleep(delay)
                    if gone.done():
                        self.client_disconnects += 1
                        return
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if gone is not None:
                gone.cancel()

    async def _control(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        if path == "/_sandbox/health":
            await _send_json(send, 200, {"status": "ok"})
        elif path == "/_sandbox/config" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    changes = orjson.loads(await _read_body(receive) or b"{}")
                    if not isinstance(changes, dict):
                        raise ValueError("the body must be a JSON object of knobs")
                    self.config = self.config.merged(changes)
                except (ValueError, TypeError, _BodyTooLarge) as exc:
                    await _send_json(send, 400, {"error": str(exc) or "invalid body"})
                    return
            await _send_json(send, 200, dataclasses.asdict(self.config))
        elif path == "/_sandbox/reset" and method == "POST":
            self.reset()
            await _send_json(send, 200, dataclasses.asdict(self.config))
        elif path == "/_sandbox/stats" and method == "GET":
            await _send_json(send, 200, self.stats())
        elif path == "/_sandbox/requests" and method == "GET":
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            try:
                limit = int(query.get("limit", REQUEST_LOG_SIZE))
            except ValueError:
                limit = -1
            if limit < 0:
                await _send_json(send, 400, {"error": "limit must be an integer >= 0"})
                return
            newest_first = list(reversed(self.requests))[:limit]
            await _send_json(send, 200, {"requests": newest_first})
        else:
            await _send_json(send, 404, {"error": f"no such control endpoint: {method} {path}"})


def _models_list(wire: Wire) -> dict:
    if wire == "anthropic":
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in MODELS]
        return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
    if wire == "gemini":
        return {"models": [{"name": f"models/{m}", "version": "1", "displayName": m,
                            "inputTokenLimit": 1_048_576, "outputTokenLimit": 65_536,
                            "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                                           "countTokens"]} for m in MODELS]}
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 1735689600,
                                        "owned_by": "tollgate-sandbox"} for m in MODELS]}


def make_app(config: SandboxConfig | None = None) -> SandboxApp:
    """The sandbox as an ASGI app, started with `config` (a copy: reset() returns to it)."""
    return SandboxApp(config)


# --------------------------------------------------------------------------------------------
# Command line (shared with `manage.py sandbox_provider`; `python -m proxy.sandbox` needs no Django)


def add_arguments(parser: Any) -> None:
    """The command-line options of the sandbox, on an argparse parser."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before the response headers")
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="delay between stream events")
    parser.add_argument("--chunks", type=int, default=8, help="content events per stream")
    parser.add_argument("--fail-status", type=int, default=None, help="answer with this status (e.g. 429, 529)")
    parser.add_argument("--fail-count", type=int, default=0, help="fail only the next N requests (0: all)")
    parser.add_argument("--fail-every", type=int, default=0, help="fail one request in N, indefinitely")
    parser.add_argument("--disconnect-after", type=int, default=None, help="drop streams after N events")
    parser.add_argument("--hang-ms", type=int, default=0, help="sleep before answering")
    parser.add_argument("--require-key", default=None, help="accept only this API key")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug", "trace"])


def config_from_options(options: Mapping[str, Any]) -> SandboxConfig:
    """A validated SandboxConfig from parsed options; raises ValueError."""
    config = SandboxConfig(latency_ms=options["latency_ms"], chunk_delay_ms=options["chunk_delay_ms"],
                           chunks=options["chunks"], fail_status=options["fail_status"],
                           fail_count=options["fail_count"], fail_every=options.get("fail_every", 0),
                           disconnect_after=options["disconnect_after"],
                           hang_ms=options["hang_ms"], require_key=options["require_key"] or None)
    config.validate()
    return config


def serve(config: SandboxConfig, *, host: str, port: int, log_level: str = "warning") -> None:
    import uvicorn

    # backlog: the benchmark opens thousands of streams at once; the default (2048) would drop some.
    uvicorn.run(make_app(config), host=host, port=port, log_level=log_level, loop="auto", http="auto",
                access_log=False, backlog=8192)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m proxy.sandbox", description=__doc__.splitlines()[0])
    add_arguments(parser)
    options = vars(parser.parse_args(argv))
    try:
        config = config_from_options(options)
    except ValueError as exc:
        parser.error(str(exc))
    serve(config, host=options["host"], port=options["port"], log_level=options["log_level"])


if __name__ == "__main__":
    main()
