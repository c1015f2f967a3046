"""The internal representation of a chat (DESIGN §5): what every wire format translates to and from.

A caller's body is decoded into a `ChatRequest`, encoded into the provider's
format, and the provider's answer is decoded into a `ChatResponse` (or a
sequence of `StreamEvent`s) and encoded into the caller's format. Same-format
calls skip all of this (proxy/calls.py passes bytes through).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from gateway_site.lib.secretfilter import scrub_secrets
from proxy.errors import GatewayError

# "system" is a system/developer message inside the conversation (Anthropic's
# mid-conversation system messages, OpenAI's developer messages after the first turn);
# the leading system prompt stays in `ChatRequest.system`.
Role = Literal["user", "assistant", "tool", "system"]
# How hard a reasoning model thinks, format-neutral (OpenAI reasoning effort names).
Effort = Literal["minimal", "low", "medium", "high"]
# Why a reply ended, format-neutral (OpenAI / Anthropic / Gemini names in each codec).
Finish = Literal["end", "max_tokens", "stop_sequence", "tool_use", "content_filter"]


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image given inline (`data`, base64, with `media_type`) or by `url`."""

    url: str | None = None
    media_type: str | None = None
    data: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it


@dataclass(frozen=True, slots=True)
class ToolResult:
    tool_call_id: str
    content: str
    name: str | None = None  # the called tool's name (Gemini needs it); found from the call when absent
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class Reasoning:
    """A model's reasoning (Anthropic thinking, OpenAI reasoning items, Gemini thoughts).

    `wire` names the format it came from: signatures and encrypted content are only
    meaningful to that provider, so encoders for other formats drop the part.
    """

    text: str = ""
    signature: str | None = None  # Anthropic thinking signature / OpenAI encrypted_content
    redacted: bool = False  # Anthropic redacted_thinking (opaque `signature` holds its data)
    wire: str | None = None


Part = Text | Image | ToolCall | ToolResult | Reasoning


@dataclass(slots=True)
class Message:
    """`user` holds Text/Image, `assistant` Text/ToolCall/Reasoning, `tool` only ToolResults, `system` Text."""

    role: Role
    parts: list[Part]


@dataclass(frozen=True, slots=True)
class ToolDef:
    name: str
    description: str | None = None
    parameters: dict | None = None  # JSON schema of the arguments


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: Literal["auto", "none", "required", "tool"]
    name: str | None = None  # with mode "tool"


@dataclass(slots=True)
class ChatRequest:
    messages: list[Message]
    system: list[str] = field(default_factory=list)
    tools: list[ToolDef] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False  # OpenAI callers: stream_options.include_usage
    user: str | None = None
    n: int = 1  # answers asked for (OpenAI `n`, Gemini candidateCount)
    reasoning_effort: Effort | None = None
    thinking_budget: int | None = None  # reasoning tokens allowed (Anthropic budget_tokens, Gemini thinkingBudget)
    # Structured output: {"type": "json_schema", "name", "schema", "strict"} or {"type": "json_object"}.
    response_format: dict | None = None


@dataclass(slots=True)
class Usage:
    """Token counts as the provider billed them, in one convention for every format.

    `input_tokens` counts the whole prompt, cached parts included (OpenAI's and Gemini's
    convention; Anthropic's `input_tokens` excludes cache reads and writes, so its codec
    adds them). `cache_read_tokens` and `cache_write_tokens` are parts of it;
    `reasoning_tokens` is part of `output_tokens`.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0  # Anthropic's one-hour cache writes, priced apart
    reasoning_tokens: int = 0


@dataclass(slots=True)
class ChatResponse:
    id: str
    model: str
    parts: list[Part]  # Text and ToolCall
    finish: Finish = "end"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)


# --- Stream events: what a decoder yields per upstream event, and an encoder consumes.


@dataclass(frozen=True, slots=True)
class StreamStart:
    id: str
    model: str
    input_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int  # the tool call's position among this reply's tool calls
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    arguments: str  # a piece of the arguments' JSON text


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str = ""
    signature: str | None = None
    wire: str | None = None  # as Reasoning.wire: the format whose provider made it (signatures are its own)


@dataclass(frozen=True, slots=True)
class StreamFinish:
    finish: Finish
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """Usage seen in a stream, in `Usage`'s convention."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class StreamError:
    """The provider reported an error inside the stream; its message is scrubbed of secrets on the
    way in, as it may reach the caller (gateway_site.lib.secretfilter)."""

    message: str
    status: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", scrub_secrets(self.message))


StreamEvent = (StreamStart | TextDelta | ReasoningDelta | ToolCallStart | ToolCallDelta | StreamFinish | StreamUsage
               | StreamError)


class TranslationError(GatewayError):
    """The request uses something the provider's format cannot express (a 400 if no deployment can)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__("invalid_request", message, code="untranslatable", param=param)


def tool_names_by_id(messages: list[Message]) -> dict[str, str]:
    return {p.id: p.name for m in messages for p in m.parts if isinstance(p, ToolCall)}


def fill_tool_result_names(messages: list[Message]) -> None:
    """Give each ToolResult the name of the call it answers (formats that need it look it up here)."""
    names = tool_names_by_id(messages)
    for message in messages:
        if message.role != "tool":
            continue
        message.parts = [
            ToolResult(p.tool_call_id, p.content, p.name or names.get(p.tool_call_id), p.is_error)
            if isinstance(p, ToolResult) else p
            for p in message.parts
        ]


def parse_data_url(url: str) -> tuple[str, str] | None:
    """(media_type, base64 data) of a `data:<type>;base64,<data>` URL, else None."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        return None
    return header[: -len(";base64")] or "application/octet-stream", data


def image_url(image: Image) -> str:
    if image.url is not None:
        return image.url
    return f"data:{image.media_type or 'image/png'};base64,{image.data or ''}"


def response_text(response: ChatResponse) -> str:
    return "".join(p.text for p in response.parts if isinstance(p, Text))
