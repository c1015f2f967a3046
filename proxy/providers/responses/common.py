"""What the Responses codec's caller side and provider side share: ids, usage, finish, errors, reasoning."""
from __future__ import annotations

import secrets
import time
from typing import Any

import orjson

from proxy.providers.common import obj
from proxy.providers.ir import Finish, Reasoning, StreamUsage, Usage
from proxy.providers.sse import sse_event

WIRE = "responses"

# A Response's `status` and `incomplete_details.reason` for a finish (OpenAI reports the
# two ways a reply is cut short as "incomplete"; everything else completed).
INCOMPLETE_REASONS: dict[str, str] = {"max_tokens": "max_output_tokens", "content_filter": "content_filter"}
FINISH_OF_INCOMPLETE: dict[str, Finish] = {"max_output_tokens": "max_tokens", "content_filter": "content_filter"}

# The schema a freeform ("custom") tool gets when it becomes a function for another provider.
CUSTOM_TOOL_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's whole input, as raw text."}},
    "required": ["input"],
    "additionalProperties": False,
}

# Reasoning from another provider (Anthropic thinking signatures, Gemini thought
# signatures) travels to a Responses caller inside `encrypted_content`, tagged so that it
# comes back to the provider that signed it: Anthropic refuses a tool-use turn whose
# thinking block lost its signature. OpenAI would refuse the tag, so
# `strip_foreign_reasoning` removes such items before a same-format call.
_FOREIGN_TAG = "tollgate:"
_ENCRYPTED_INCLUDE = "reasoning.encrypted_content"

_ERROR_CODE_OF_STATUS = {429: "rate_limit_exceeded", 400: "invalid_prompt"}
STATUS_OF_ERROR_CODE: dict[str, int] = {
    "rate_limit_exceeded": 429, "insufficient_quota": 429, "invalid_prompt": 400, "context_length_exceeded": 400,
    "invalid_request_error": 400, "server_error": 500, "server_is_overloaded": 503,
}
# The terminal events of a Responses stream: a same-format relay holds them until the audit
# row is durable (DESIGN §4), as it holds [DONE] and message_stop.
TERMINAL_EVENTS = (b"event: response.completed", b"event: response.incomplete", b"event: response.failed")


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def response_id(ident: str) -> str:
    """A `resp_` id for the caller; a provider's own id is kept in it when it has one."""
    if ident.startswith("resp_"):
        return ident
    cleaned = "".join(c for c in ident if c.isalnum())
    return f"resp_{cleaned}" if cleaned else new_id("resp")


def now() -> int:
    return int(time.time())


def usage_body(usage: Usage | StreamUsage) -> dict[str, Any]:
    """OpenAI's usage object; `input_tokens` counts cached tokens too, as in ir.Usage."""
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    writes = usage.cache_write_tokens + usage.cache_write_1h_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": usage.cache_read_tokens, "cache_write_tokens": writes},
        "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": prompt + completion,
    }


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def usage_from(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    inputs = obj(data.get("input_tokens_details"))
    outputs = obj(data.get("output_tokens_details"))
    return Usage(_int(data.get("input_tokens")), _int(data.get("output_tokens")),
                 cache_read_tokens=_int(inputs.get("cached_tokens")) or 0,
                 cache_write_tokens=_int(inputs.get("cache_write_tokens")) or 0,
                 reasoning_tokens=_int(outputs.get("reasoning_tokens")) or 0)


def status_of(finish: Finish) -> tuple[str, dict[str, str] | None]:
    """(status, incomplete_details) of a Response that ended this way."""
    reason = INCOMPLETE_REASONS.get(finish)
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def wants_encrypted_reasoning(body: dict[str, Any]) -> bool:
    include = body.get("include")
    return isinstance(include, list) and _ENCRYPTED_INCLUDE in include


def custom_tool_names(body: dict[str, Any]) -> frozenset[str]:
    """Names of the caller's freeform tools: their calls go back as `custom_tool_call` items. They
    are in `tools`, in its namespaces, or in additional_tools input items (Codex CLI's exec tool)."""
    offered = _flat_tools(body.get("tools"))
    for item in dicts(body.get("input")):
        if item.get("type") == "additional_tools":
            offered += _flat_tools(item.get("tools"))
    return frozenset(t["name"] for t in offered if t.get("type") == "custom" and isinstance(t.get("name"), str))


def _flat_tools(tools: Any) -> list[dict[str, Any]]:
    """A tool list with each namespace replaced by its tools (as the request decoder flattens them)."""
    flat: list[dict[str, Any]] = []
    for tool in dicts(tools):
        flat += dicts(tool.get("tools")) if tool.get("type") == "namespace" else [tool]
    return flat


def dicts(value: Any) -> list[dict[str, Any]]:
    """The objects in a list field, whatever else the field holds."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def reasoning_text(item: dict[str, Any]) -> str:
    """A reasoning item's summary, or its raw text (open-weight models) when it has no summary."""
    texts = [s.get("text") for s in dicts(item.get("summary"))]
    if not any(texts):
        texts = [c.get("text") for c in dicts(item.get("content"))]
    return "\n\n".join(t for t in texts if isinstance(t, str))


def encrypted_content(part: Reasoning) -> str | None:
    """What a reasoning item carries for the caller to send back, or None."""
    if not part.signature or part.wire is None:
        return None
    if part.wire == WIRE:
        return part.signature
    kind = "redacted" if part.redacted else "signed"
    return f"{_FOREIGN_TAG}{part.wire}:{kind}:{part.signature}"


def reasoning_part(text: str, encrypted: str | None) -> Reasoning:
    """The IR part of a reasoning item sent back by a caller (see `encrypted_content`)."""
    if encrypted and encrypted.startswith(_FOREIGN_TAG):
        wire, _, rest = encrypted[len(_FOREIGN_TAG):].partition(":")
        kind, _, signature = rest.partition(":")
        return Reasoning(text, signature or None, redacted=kind == "redacted", wire=wire or None)
    return Reasoning(text, encrypted or None, wire=WIRE)


def strip_foreign_reasoning(body: dict[str, Any]) -> bool:
    """Drop reasoning items that carry another provider's signature (before a call to OpenAI itself).

    True if anything was dropped.
    """
    items = body.get("input")
    if not isinstance(items, list):
        return False
    kept = [item for item in items
            if not (isinstance(item, dict) and item.get("type") == "reasoning"
                    and isinstance(item.get("encrypted_content"), str)
                    and item["encrypted_content"].startswith(_FOREIGN_TAG))]
    if len(kept) == len(items):
        return False
    body["input"] = kept
    return True


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape (the Responses API uses the same as Chat Completions)."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "invalid_request_error", 429: "rate_limit_error"}.get(status, "upstream_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def failed_error(message: str, status: int) -> dict[str, str]:
    """A failed Response's `error`: its `code` is one of a fixed list, so only the nearest fits."""
    return {"code": _ERROR_CODE_OF_STATUS.get(status, "server_error"), "message": message}


def event(kind: str, sequence_number: int, payload: dict[str, Any]) -> bytes:
    return sse_event(kind, orjson.dumps({"type": kind, **payload, "sequence_number": sequence_number}))


def bare_response(ident: str, model: str, status: str) -> dict[str, Any]:
    """The fields every Response object needs, with nothing of a request echoed."""
    return {"id": ident, "object": "response", "created_at": now(), "status": status, "error": None,
            "incomplete_details": None, "instructions": None, "model": model, "output": [],
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": None}


def stream_error(message: str, code: str, status: int = 502, sequence_number: int = 0) -> bytes:
    """An `error` event and a `response.failed` for a stream that breaks outside an encoder.

    Clients such as Codex read only `response.failed` (and retry a stream that ends
    without one); the `error` event is what OpenAI itself sends first.
    """
    failed = bare_response(new_id("resp"), "", "failed")
    failed["error"] = failed_error(message, status)
    return (event("error", sequence_number, {"code": code, "message": message, "param": None})
            + event("response.failed", sequence_number + 1, {"response": failed}))
