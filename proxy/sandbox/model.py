"""The sandbox's deterministic model: a request reduced to a Conversation, its Reply and Usage.

Every wire format parses into the same Conversation and renders the same Reply, so that the same
conversation gets the same answer and the same token counts in every format (docs/sandbox.md,
"Determinism rules"). No I/O and no wire format here: tests import these rules to compute what
the sandbox will answer instead of hard-coding numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

Wire = Literal["openai", "anthropic", "gemini"]
Finish = Literal["end", "max_tokens", "stop_sequence", "tool_use"]

REPLY_PREFIX = "Sandbox reply to: "
REPLY_INPUT_CHARS = 200
TOOL_RESULT_PREFIX = "Tool result received: "
TOOL_RESULT_CHARS = 100
MESSAGE_OVERHEAD_TOKENS = 4
# Images, audio and files are not read; each costs a flat amount (OpenAI's low-detail image price).
ATTACHMENT_TOKENS = 85


class SandboxRequestError(ValueError):
    """The request body is invalid; `param` names the offending field as the OpenAI API does."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True)
class Usage:
    """Token counts in OpenAI's convention: the details are parts of the totals, not additions."""

    prompt_tokens: int  # every input token, those read from or written to a cache included
    completion_tokens: int  # every output token, hidden reasoning included
    cache_read_tokens: int = 0  # of prompt_tokens
    cache_write_tokens: int = 0  # of prompt_tokens
    reasoning_tokens: int = 0  # of completion_tokens

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
    """A request of any wire format in one form."""

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


def apply_usage_knobs(usage: Usage, *, max_tokens: int | None = None, cache_read_tokens: int = 0,
                      cache_read_percent: int = 0, cache_write_tokens: int = 0, cache_write_percent: int = 0,
                      reasoning_tokens: int = 0) -> Usage:
    """`usage` with cache reads, cache writes and reasoning tokens as the knobs say.

    Reads are cache_read_tokens, or else cache_read_percent of the prompt (rounded down), at most
    the prompt; writes likewise, at most what is left of the prompt. Reasoning tokens are added
    to the output, but never past max_tokens. Totals stay as OpenAI counts them: prompt tokens
    include the cached ones and completion tokens the reasoning ones.
    """
    prompt = usage.prompt_tokens
    read = min(cache_read_tokens or prompt * cache_read_percent // 100, prompt)
    write = min(cache_write_tokens or prompt * cache_write_percent // 100, prompt - read)
    reasoning = reasoning_tokens
    if max_tokens is not None:
        reasoning = min(reasoning, max(0, max_tokens - usage.completion_tokens))
    return Usage(prompt, usage.completion_tokens + reasoning, read, write, reasoning)


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
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    required = required if isinstance(required, list) else []
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
