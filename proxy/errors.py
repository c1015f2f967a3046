"""One error type for the proxy, rendered in the caller's wire format (DESIGN §5)."""
from __future__ import annotations

from enum import StrEnum

import orjson
from django.http import HttpResponse


class Caller(StrEnum):
    """The wire format the client speaks; errors go back in its shape."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    # OpenAI's Responses API: OpenAI's error shape, its own stream events.
    RESPONSES = "responses"
    # Gemini generateContent (google-genai SDK, Gemini CLI): Google's error shape.
    GEMINI = "gemini"


# kind -> (status, OpenAI error type, Anthropic error type, Google status name)
_KINDS: dict[str, tuple[int, str, str, str]] = {
    "invalid_request": (400, "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    "authentication": (401, "invalid_request_error", "authentication_error", "UNAUTHENTICATED"),
    "permission": (403, "permission_error", "permission_error", "PERMISSION_DENIED"),
    "not_found": (404, "invalid_request_error", "not_found_error", "NOT_FOUND"),
    "method_not_allowed": (405, "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT"),
    # A body that did not arrive within TOLLGATE_BODY_READ_TIMEOUT_SECONDS (gateway_site/asgi.py).
    "request_timeout": (408, "invalid_request_error", "invalid_request_error", "DEADLINE_EXCEEDED"),
    # Google has no status of its own for a body or headers over the limit: the request is invalid as sent.
    "request_too_large": (413, "invalid_request_error", "request_too_large", "INVALID_ARGUMENT"),
    # Anthropic has no type of its own for 431; its 413 type is the nearest.
    "headers_too_large": (431, "invalid_request_error", "request_too_large", "INVALID_ARGUMENT"),
    "rate_limit": (429, "rate_limit_error", "rate_limit_error", "RESOURCE_EXHAUSTED"),
    "internal": (500, "server_error", "api_error", "INTERNAL"),
    "upstream": (502, "upstream_error", "api_error", "UNAVAILABLE"),
    "unavailable": (503, "service_unavailable", "overloaded_error", "UNAVAILABLE"),
    "timeout": (504, "timeout_error", "api_error", "DEADLINE_EXCEEDED"),
}


class GatewayError(Exception):
    """A request the gateway refuses or cannot complete; `kind` picks status and error types."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        if kind not in _KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        self.kind = kind
        self.message = message
        self.code = code
        self.param = param
        self.status = status or _KINDS[kind][0]
        self.headers = headers or {}

    def body(self, caller: Caller) -> dict:
        _, openai_type, anthropic_type, google_status = _KINDS[self.kind]
        if caller is Caller.ANTHROPIC:
            return {"type": "error", "error": {"type": anthropic_type, "message": self.message}}
        if caller is Caller.GEMINI:
            return {"error": {"code": self.status, "message": self.message, "status": google_status}}
        return {
            "error": {"message": self.message, "type": openai_type, "param": self.param, "code": self.code}
        }


def json_response(payload: object, *, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def error_response(error: GatewayError, caller: Caller) -> HttpResponse:
    return json_response(error.body(caller), status=error.status, headers=error.headers)
