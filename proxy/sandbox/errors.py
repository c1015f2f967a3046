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


# What real providers write in their errors, for the gateway's tests that no secret of the
# operator's reaches an agent: OpenAI names a fragment of the key and the organisation, Gemini
# answers a bad key with a 400. (message, OpenAI code, param) per wire format and status.
_REALISTIC: dict[tuple[Wire, int], tuple[str, str | None, str | None]] = {
    ("openai", 401): ("Incorrect API key provided: sk-proj-***abcd. You can find your API key at "
                      "https://platform.openai.com/account/api-keys.", "invalid_api_key", None),
    ("openai", 403): ("Project `proj_Xq3vB7kLm2Tz` does not have access to model `gpt-4o`.", "model_not_found",
                      None),
    ("openai", 429): ("Rate limit reached for gpt-4o in organization org-Sb4XyZ12abCD on tokens per min (TPM): "
                      "Limit 30000, Used 29620, Requested 1200. Please try again in 1.64s.", "rate_limit_exceeded",
                      None),
    ("openai", 400): ("This model's maximum context length is 128000 tokens. However, your messages resulted in "
                      "130412 tokens. Please reduce the length of the messages.", "context_length_exceeded",
                      "messages"),
    ("anthropic", 401): ("invalid x-api-key", None, None),
    ("anthropic", 400): ("prompt is too long: 215013 tokens > 200000 maximum", None, None),
    ("anthropic", 529): ("Overloaded", None, None),
    ("gemini", 400): ("API key not valid. Please pass a valid API key.", None, None),
}


def failure_body(wire: Wire, status: int, realistic: bool) -> dict:
    """The body of a simulated failure: the sandbox's own text, or (realistic) a real provider's."""
    found = _REALISTIC.get((wire, status)) if realistic else None
    if found is None:
        return error_body(wire, status, simulated_failure_message(status))
    message, code, param = found
    body = error_body(wire, status, message, param)
    if wire == "openai":
        body["error"]["code"] = code
    elif wire == "gemini" and status == 400:
        body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                                     "domain": "googleapis.com",
                                     "metadata": {"service": "generativelanguage.googleapis.com"}}]
    return body
