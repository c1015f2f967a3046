"""Which parser reads which wire format: the one entry point tests use to predict the sandbox.

It sits above the format modules (each imports the model, none imports another) so that the
server and tests can name a format without knowing where its parser lives.
"""
from __future__ import annotations

from typing import Any

import proxy.sandbox.anthropic_messages as anthropic_messages
import proxy.sandbox.gemini_generate as gemini_generate
import proxy.sandbox.openai_chat as openai_chat
import proxy.sandbox.openai_responses as openai_responses
from proxy.sandbox.model import Conversation, SandboxRequestError, Usage, apply_usage_knobs, plan_reply

# Conversation formats by the names the request log uses; the bare wire names are the older
# spelling of the first three, kept for callers.
CONVERSATION_FORMATS = ("openai.chat", "openai.responses", "anthropic.messages", "gemini.generateContent")
_ALIASES = {"openai": "openai.chat", "anthropic": "anthropic.messages", "gemini": "gemini.generateContent",
            "gemini.streamGenerateContent": "gemini.generateContent"}


def parse_request(wire: str, body: Any, *, model: str = "", count_only: bool = False) -> Conversation:
    """Validate a request body of format `wire` and reduce it to a Conversation.

    `wire` is "openai" (Chat Completions), "anthropic", "gemini" or one of CONVERSATION_FORMATS.
    Gemini carries the model in the URL: pass it as `model`. `count_only` parses a token-counting
    request (Anthropic count_tokens needs no max_tokens). Raises SandboxRequestError.
    """
    fmt = _ALIASES.get(wire, wire)
    if fmt not in CONVERSATION_FORMATS:
        raise ValueError(f"unknown format {wire!r}; known: {', '.join(CONVERSATION_FORMATS)}")
    if not isinstance(body, dict):
        raise SandboxRequestError("The request body must be a JSON object.")
    if fmt == "openai.chat":
        return openai_chat.parse(body)
    if fmt == "openai.responses":
        return openai_responses.parse(body)
    if fmt == "anthropic.messages":
        return anthropic_messages.parse(body, count_only=count_only)
    return gemini_generate.parse(body, model)


def expected_usage(wire: str, body: Any, *, model: str = "", **usage_knobs: int) -> Usage:
    """The usage the sandbox reports for this request body (stream and non-stream alike).

    `usage_knobs` are the usage knobs in effect (cache_read_tokens=..., reasoning_tokens=...).
    """
    conv = parse_request(wire, body, model=model)
    return apply_usage_knobs(plan_reply(conv).usage, max_tokens=conv.max_tokens, **usage_knobs)
