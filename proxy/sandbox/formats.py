"""Which parser reads which wire format: the one entry point tests use to predict the sandbox.

It sits above the format modules (each imports the model, none imports another) so that the
server and tests can name a format without knowing where its parser lives.
"""
from __future__ import annotations

from typing import Any

from proxy.sandbox import anthropic_messages, gemini_generate, openai_chat
from proxy.sandbox.model import Conversation, SandboxRequestError, Usage, Wire, plan_reply


def parse_request(wire: Wire, body: Any, *, model: str = "", count_only: bool = False) -> Conversation:
    """Validate a request body of `wire` format and reduce it to a Conversation.

    Gemini carries the model in the URL: pass it as `model`. `count_only` parses a token-counting
    request (Anthropic count_tokens needs no max_tokens). Raises SandboxRequestError.
    """
    if not isinstance(body, dict):
        raise SandboxRequestError("The request body must be a JSON object.")
    if wire == "openai":
        return openai_chat.parse(body)
    if wire == "anthropic":
        return anthropic_messages.parse(body, count_only=count_only)
    return gemini_generate.parse(body, model)


def expected_usage(wire: Wire, body: Any, *, model: str = "") -> Usage:
    """The usage the sandbox reports for this request body (stream and non-stream alike)."""
    return plan_reply(parse_request(wire, body, model=model)).usage
