"""A request's worst case, worked out before the upstream call (issue #16): what it may cost.

Admission reserves `prompt + n x output bound` (proxy.admission), so the bound it reserves
must be the one the provider obeys: the output bound is always sent upstream, in the field
the provider honours, also on a same-format pass-through (the body's field is rewritten).

**The prompt** is counted without a tokenizer (microseconds), never below what a provider
counts. Per text: max(bytes/3, wordsx1.5, words + digits and ASCII punctuation + 3/4 of the
bytes beyond one per character). Prose tokenizes at about 4 bytes a token (bytes/3 covers
it), short words at one token each (wordsx1.5), code and JSON at a token per symbol
(words + punctuation), Gemini's tokenizer splits every digit (the digits), and CJK text at
one to one and a half tokens a character (the multi-byte term). Against the sandbox's
counter (bytes/4, +4 a message) it is 1.33 to 1.5 times as much for English prose
(tests/budgets/test_bounds.py measures the agents' captured requests).

Media by the providers' documented rules, rounded up: an image is at most about 1,600
tokens at Anthropic (its pixels / 750, scaled to 1.15 megapixels), 1,445 at OpenAI's tile
models and 2,490 at its patch models, 258 per 768-px tile at Gemini: 2,500. A document,
file or audio clip: 3,000 (a PDF page is text plus an image at Anthropic), or a token per
30 bytes of its inline data when that is more. Tool definitions: their JSON at 3 bytes a
token plus 400 for the tool-use system prompt the providers add (Anthropic documents
313-346 tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from proxy.errors import GatewayError

if TYPE_CHECKING:
    from proxy.routing import RouteInfo

IMAGE_TOKENS = 2500
DOCUMENT_TOKENS = 3000
INLINE_BYTES_PER_TOKEN = 30
TOOLS_OVERHEAD_TOKENS = 400
MESSAGE_TOKENS = 4

# Content parts that are media, by their `type` (OpenAI, Responses, Anthropic) or their key (Gemini).
_IMAGE_TYPES = frozenset({"image_url", "image", "input_image"})
_DOCUMENT_TYPES = frozenset({"document", "file", "input_file", "input_audio", "audio"})
_GEMINI_MEDIA = ("inlineData", "inline_data", "fileData", "file_data")
# Keys whose strings are no prompt text: names of things, or opaque signatures no provider bills.
_SKIP_KEYS = frozenset({"type", "role", "id", "tool_call_id", "tool_use_id", "call_id", "model", "signature",
                        "thoughtSignature", "thought_signature", "cache_control", "status", "mime_type",
                        "mimeType", "media_type", "detail", "format"})
_TOOL_KEYS = frozenset({"tools", "functions"})
_MESSAGE_LISTS = frozenset({"messages", "contents", "input"})
# Bytes that start a token of their own in every tokenizer we know: digits and ASCII punctuation.
_NOT_SYMBOL = bytes(b for b in range(256) if not (0x21 <= b <= 0x7E and not chr(b).isalpha()))


def text_tokens(text: str) -> int:
    """At least the tokens any provider counts for `text` (see the module's docstring)."""
    if not text:
        return 0
    data = text.encode("utf-8", "surrogatepass")
    size = len(data)
    if size < 8:
        return size  # a token per byte: the most any byte-level tokenizer can make of it
    words = len(data.split())
    symbols = len(data.translate(None, _NOT_SYMBOL))
    multibyte = size - len(text)
    # Never above a token per byte, the most a byte-level tokenizer can make of any text.
    return min(size, max(-(-size // 3), -(-words * 3 // 2), words + symbols + -(-multibyte * 3 // 4)))


def _media_tokens(part: dict[str, Any]) -> int | None:
    """Tokens of a media part, None if `part` is not one."""
    kind = part.get("type")
    if kind in _IMAGE_TYPES:
        return IMAGE_TOKENS
    inline = None
    if kind in _DOCUMENT_TYPES:
        inline = part
    else:
        for key in _GEMINI_MEDIA:
            if isinstance(part.get(key), dict):
                mime = str(part[key].get("mimeType") or part[key].get("mime_type") or "")
                if mime.startswith("image/"):
                    return IMAGE_TOKENS
                inline = part[key]
                break
        else:
            return None
    return max(DOCUMENT_TOKENS, _inline_size(inline) // INLINE_BYTES_PER_TOKEN)


def _inline_size(value: Any) -> int:
    """The longest string inside a media part: its base64 data, if it carries any."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return max((_inline_size(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return max((_inline_size(v) for v in value), default=0)
    return 0


def _value_tokens(value: Any) -> int:
    if isinstance(value, str):
        return text_tokens(value)
    if isinstance(value, list):
        return sum(_value_tokens(item) for item in value)
    if isinstance(value, dict):
        media = _media_tokens(value)
        if media is not None:
            return media
        total = 0
        for key, item in value.items():
            if key in _SKIP_KEYS:
                continue
            if key in _TOOL_KEYS:
                total += _tools_tokens(item)
            elif isinstance(item, str | list | dict):
                total += _value_tokens(item)
        return total
    return 0


def _tools_tokens(tools: Any) -> int:
    if not tools:
        return 0
    return TOOLS_OVERHEAD_TOKENS + text_tokens(orjson.dumps(tools).decode())


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """At least the prompt tokens a provider counts for this request body, in any of the wire formats
    (Chat Completions, Responses, Anthropic Messages, Gemini), without a tokenizer."""
    total = 0
    for key, value in body.items():
        if key in _SKIP_KEYS:
            continue
        if key in _TOOL_KEYS:
            total += _tools_tokens(value)
        elif key in _MESSAGE_LISTS and isinstance(value, list):
            total += MESSAGE_TOKENS * len(value) + _value_tokens(value)
        elif isinstance(value, str | list | dict):
            total += _value_tokens(value)
    return total


# --- The output bound -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutputBound:
    """The most output a request may make: `tokens` per answer (sent upstream), `choices` answers."""

    tokens: int
    choices: int = 1

    @property
    def total(self) -> int:
        return self.tokens * self.choices


def wire_of(caller: str, endpoint: str) -> str:
    """The format of a request body: openai (Chat Completions), responses, anthropic, gemini, embeddings."""
    if "embed" in endpoint:
        return "embeddings"
    if endpoint.startswith("responses"):
        return "responses"
    if caller == "gemini" or "generate" in endpoint.lower():
        return "gemini"
    return "anthropic" if caller == "anthropic" else "openai"


def _positive(body: dict[str, Any], name: str, param: str | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GatewayError("invalid_request", f"'{param or name}' must be an integer of at least 1.",
                           param=param or name)
    return value


def _gemini_config(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The generation config's key as the body spells it (the API takes both), and its value."""
    key = "generation_config" if "generation_config" in body and "generationConfig" not in body \
        else "generationConfig"
    config = body.get(key)
    return key, config if isinstance(config, dict) else {}


def _client_bound(wire: str, body: dict[str, Any]) -> tuple[int | None, int]:
    """(the client's max output tokens or None, the number of answers asked for)."""
    if wire == "openai":
        completion = _positive(body, "max_completion_tokens")
        legacy = _positive(body, "max_tokens")
        if completion is not None and legacy is not None and completion != legacy:
            raise GatewayError(
                "invalid_request",
                f"'max_completion_tokens' ({completion}) and 'max_tokens' ({legacy}) disagree; send one of them.",
                code="conflicting_max_tokens", param="max_tokens")
        return (completion if completion is not None else legacy), (_positive(body, "n") or 1)
    if wire == "responses":
        return _positive(body, "max_output_tokens"), 1
    if wire == "anthropic":
        return _positive(body, "max_tokens"), 1
    if wire == "gemini":
        key, config = _gemini_config(body)
        snake = key == "generation_config"
        limit = _positive(config, "max_output_tokens" if snake else "maxOutputTokens",
                          f"{key}.{'max_output_tokens' if snake else 'maxOutputTokens'}")
        count = _positive(config, "candidate_count" if snake else "candidateCount",
                          f"{key}.{'candidate_count' if snake else 'candidateCount'}")
        return limit, count or 1
    return None, 1


def output_bound(wire: str, body: dict[str, Any], route: RouteInfo) -> OutputBound:
    """min(the client's max output tokens, the route's cap), or the route's default (capped too)
    when the client gave none, and how many answers; a 400 for conflicting or invalid fields."""
    if wire == "embeddings":
        return OutputBound(0)
    asked, choices = _client_bound(wire, body)
    tokens = asked if asked is not None else route.default_max_tokens
    cap = route.max_output_tokens
    if cap is not None:
        tokens = min(tokens, cap)
    return OutputBound(tokens, choices)


def bound_apply(wire: str, payload: dict[str, Any], tokens: int, *, openai_field: str = "max_tokens") -> None:
    """Write the output bound into a same-format upstream body, in the field the provider honours:
    the one the client used (Chat Completions), else `openai_field` (the adapter's choice)."""
    if wire == "openai":
        used = [name for name in ("max_completion_tokens", "max_tokens") if payload.get(name) is not None]
        for name in used or [openai_field]:
            payload[name] = tokens
    elif wire == "responses":
        payload["max_output_tokens"] = tokens
    elif wire == "anthropic":
        payload["max_tokens"] = tokens
    elif wire == "gemini":
        key, config = _gemini_config(payload)
        payload[key] = {**config, ("max_output_tokens" if key == "generation_config" else "maxOutputTokens"): tokens}


# --- What was relayed, for the output estimate when the provider's count never comes --------------


def _keys(*names: str) -> tuple[bytes, ...]:
    # Compact JSON first (what the providers send); then with a space, as some compatible servers write it.
    return tuple(f'"{n}":"'.encode() for n in names) + tuple(f'"{n}": "'.encode() for n in names)


# Where the answer's text is in a passed-through SSE event, most frequent first: an event carries
# one kind of delta, so the first key found is the one counted.
OPENAI_TEXT_KEYS = _keys("content", "arguments", "reasoning_content", "refusal")
ANTHROPIC_TEXT_KEYS = _keys("text", "partial_json", "thinking")
RESPONSES_TEXT_KEYS = _keys("delta")
GEMINI_TEXT_KEYS = _keys("text")


def relayed_text_bytes(event: bytes, keys: tuple[bytes, ...]) -> int:
    """Bytes of answer text in one passed-through SSE event (a few bytes.find, well under a microsecond
    for a content delta: a regular expression cost several times more on every event of every stream).
    JSON escapes count as written: a little over, never under."""
    for key in keys:
        start = event.find(key)
        if start >= 0:
            break
    else:
        return 0
    total = 0
    while start >= 0:
        start += len(key)
        end = event.find(b'"', start)
        while end > 0 and event[end - 1] == 0x5C:  # an escaped quote is part of the text
            end = event.find(b'"', end + 1)
        if end < 0:
            return total + len(event) - start
        total += end - start
        start = event.find(key, end)
    return total
