"""Error bodies in the shape of each API, so that clients and the gateway see real-looking errors.

The SDKs classify errors by these fields (OpenAI's `type`/`code`, Anthropic's `error.type`,
Gemini's `status`); the gateway's failover tests depend on that classification.
"""
from __future__ import annotations

from proxy.sandbox.model import Wire

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
RETRY_AFTER_STATUSES = frozenset({429, 503, 529})


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


def simulated_failure_message(status: int) -> str:
    what = {429: "rate limit reached", 500: "internal server error", 502: "bad gateway",
            503: "service unavailable", 504: "gateway timeout", 529: "overloaded"}.get(status, "error")
    return f"Sandbox: simulated {what} (status {status})."
