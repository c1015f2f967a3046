"""Translation rules that several codecs share: system turns, reasoning effort and budgets, JSON schemas.

Each codec owns its own wire format; what lives here is the few decisions that must
come out the same whichever pair of formats a request crosses.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.providers.ir import ChatRequest, Effort

# A system message inside the conversation, for a format that has only one leading system
# prompt (Gemini, and Anthropic without the mid-conversation-system beta): folded into a user
# turn, marked so the model reads it as the operator's words and not the user's.
SYSTEM_NOTE_PREFIX = "[system] "

# Reasoning tokens per effort, for formats that take a budget (Anthropic budget_tokens,
# Gemini 2.5 thinkingBudget). Anthropic's minimum budget is 1024.
EFFORT_BUDGETS: dict[str, int] = {"minimal": 1024, "low": 1024, "medium": 4096, "high": 16384}
MIN_ANTHROPIC_BUDGET = 1024

# Upstream model names that take OpenAI's `reasoning_effort` (and refuse temperature/top_p
# other than the defaults). Any other model answers 400 to `reasoning_effort`, so it is
# sent only to these: o-series, gpt-5 family, gpt-oss.
_OPENAI_REASONING_MODEL = re.compile(r"^(?:.*/)?(?:o\d|gpt-5|gpt-oss)", re.IGNORECASE)


def obj(value: Any) -> dict[str, Any]:
    """`value` if it is a JSON object, else an empty one: optional sub-objects read without type checks."""
    return value if isinstance(value, dict) else {}


def system_note(text: str) -> str:
    return SYSTEM_NOTE_PREFIX + text


def effort_for_budget(budget: int) -> Effort:
    """The nearest effort name for a token budget (Anthropic/Gemini budget → OpenAI effort)."""
    if budget <= 1024:
        return "low"
    if budget <= 8192:
        return "medium"
    return "high"


def reasoning_budget(request: ChatRequest) -> int | None:
    """Reasoning tokens the caller asked for: its own budget, else its effort's budget; None if neither."""
    if request.thinking_budget is not None:
        return request.thinking_budget
    if request.reasoning_effort is not None:
        return EFFORT_BUDGETS.get(request.reasoning_effort)
    return None


def openai_reasoning_model(model: str) -> bool:
    return bool(_OPENAI_REASONING_MODEL.match(model))


def arguments(text: str) -> dict[str, Any]:
    """A tool call's JSON argument text as an object ({} when it is not one: formats that need an object)."""
    try:
        value = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def json_schema_from_gemini(schema: Any) -> Any:
    """Gemini's OpenAPI-style schema (types in capitals, `nullable`) as standard JSON Schema.

    Gemini CLI and the google-genai SDK write types as "OBJECT", "STRING"...; Anthropic and
    OpenAI want "object", "string". `nullable: true` becomes a type list with "null", and
    Gemini's `propertyOrdering` (no JSON Schema meaning) is left out.
    """
    if isinstance(schema, list):
        return [json_schema_from_gemini(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "propertyOrdering":
            continue
        if key == "type" and isinstance(value, str):
            out[key] = value.lower()
        elif key == "type" and isinstance(value, list):
            out[key] = [v.lower() if isinstance(v, str) else v for v in value]
        elif key in ("properties", "$defs", "definitions", "patternProperties") and isinstance(value, dict):
            out[key] = {name: json_schema_from_gemini(v) for name, v in value.items()}
        elif key == "nullable":
            continue
        else:
            out[key] = json_schema_from_gemini(value)
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out
