"""What every provider adapter shares: the upstream error type and the adapter base.

An upstream error's own text is the operator's, not the agent's (DESIGN §6): a refused
credential (401/403, or Gemini's API_KEY_INVALID) is logged here at ERROR with the provider's
text and shown to the agent only as a 502 `upstream_authentication_failed` (proxy.calls); any
other error keeps its status, type, code and param, and its message with secrets scrubbed
(`upstream_error_detail`, `scrubbed_error_body`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson

from gateway_site.lib.secretfilter import scrub_secrets
from proxy.routing import ProviderInfo
from proxy.upstream import Timeouts, UpstreamResponse

if TYPE_CHECKING:
    from proxy.providers.ir import ChatRequest, ChatResponse, StreamEvent

logger = logging.getLogger("tollgate.upstream")

# Statuses that mean "try another deployment" (DESIGN §1 step 6); a route may name its own.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})
# The error class of a provider refusing the gateway's own credential.
CREDENTIAL_REFUSED = "upstream_authentication_failed"


class ProviderError(Exception):
    """An upstream call that failed; `retryable` decides whether failover tries the next deployment.

    `status` and `body` are the upstream's own answer when there was one (None for a
    connect error or timeout), so the caller can be shown what the provider said.
    """

    def __init__(
        self,
        message: str,
        *,
        error_class: str,
        retryable: bool,
        status: int | None = None,
        body: bytes | None = None,
        content_type: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.error_class = error_class
        self.retryable = retryable
        self.status = status
        self.body = body
        self.content_type = content_type
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: rare from model providers; ignored
    return seconds if seconds >= 0 else None


class StreamDecoder(Protocol):
    """A provider's SSE events in, internal stream events out (incrementally)."""

    def feed(self, event: str | None, data: bytes) -> list[StreamEvent]: ...

    def close(self) -> list[StreamEvent]: ...


class ProviderAdapter:
    """One upstream provider as seen by the proxy. Subclasses define the wire format.

    Same-format calls use only the URL and headers (bytes pass through); calls from
    another format go through `encode_request`, `decode_response` and `stream_decoder`.
    """

    wire_format: ClassVar[str]
    # Headers from the client that may go upstream; everything else (the client's
    # gateway key, Host, cookies, hop-by-hop headers) stays here.
    FORWARDED_HEADERS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, provider: ProviderInfo) -> None:
        self.provider = provider

    def auth_headers(self) -> dict[str, str]:
        raise NotImplementedError

    def chat_url(self, *, upstream_model: str, stream: bool) -> str:
        raise NotImplementedError

    def takes_as_is(self, wire: str) -> bool:
        """Whether a caller's body in `wire` format goes to this provider as bytes (no translation)."""
        return wire == self.wire_format

    def passthrough_url(self, wire: str, *, upstream_model: str, stream: bool) -> str:
        """Where a body that `takes_as_is` goes."""
        return self.chat_url(upstream_model=upstream_model, stream=stream)

    def health_url(self) -> str:
        """A cheap GET that costs no tokens (the provider's model list)."""
        raise NotImplementedError

    def encode_request(self, request: ChatRequest, *, upstream_model: str, default_max_tokens: int,
                       stream: bool) -> dict[str, Any]:
        raise NotImplementedError

    def decode_response(self, data: dict[str, Any]) -> ChatResponse:
        raise NotImplementedError

    def stream_decoder(self) -> StreamDecoder:
        raise NotImplementedError

    def request_headers(self, client_headers: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"content-type": "application/json", "user-agent": "tollgate/0.1"}
        for name in self.FORWARDED_HEADERS:
            if client_headers and name in client_headers:
                headers[name] = client_headers[name]
        headers.update(dict(self.provider.extra_headers))
        # The credential goes last so that nothing configured or forwarded can replace it.
        headers.update(self.auth_headers())
        return headers

    def timeout(self) -> Timeouts:
        return Timeouts(read=self.provider.timeout_seconds, connect=self.provider.connect_timeout_seconds)

    def error_from_response(self, response: UpstreamResponse, body: bytes) -> ProviderError:
        status = response.status_code
        message = _upstream_message(body) or f"HTTP {status}"
        error_class = f"upstream_{status}"
        if credential_refused(status, body):
            # The operator's problem, with the provider's own words; the agent sees a 502 without them.
            logger.error("provider %s refused the gateway's credential (HTTP %d): %s", self.provider.name, status,
                         message, extra={"provider": self.provider.name, "upstream_status": status})
            error_class = CREDENTIAL_REFUSED
        return ProviderError(
            f"Provider '{self.provider.name}' answered {status}: {message}",
            error_class=error_class,
            retryable=status in RETRYABLE_STATUSES,
            status=status,
            body=body,
            content_type=response.headers.get("content-type"),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )


def _error_object(body: bytes) -> tuple[Any, dict[str, Any] | None]:
    """(the parsed body, its `error` object) of a provider's error body; (None, None) if not JSON."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    error = data.get("error") if isinstance(data, dict) else None
    return data, error if isinstance(error, dict) else None


def _upstream_message(body: bytes) -> str | None:
    data, error = _error_object(body)
    if data is None:
        return body[:200].decode("utf-8", "replace").strip() or None
    if error is not None and isinstance(error.get("message"), str):
        return error["message"][:500]
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return data["error"][:500]
    return None


def credential_refused(status: int, body: bytes) -> bool:
    """Whether the provider refused the gateway's credential: 401, 403, or Gemini's 400 for a bad key."""
    if status in (401, 403):
        return True
    return status == 400 and b"API_KEY_INVALID" in body


@dataclass(frozen=True)
class UpstreamErrorDetail:
    """What an agent may see of a provider's error: its type, code and param, its message scrubbed."""

    message: str
    type: str | None = None
    code: str | None = None
    param: str | None = None


def upstream_error_detail(body: bytes) -> UpstreamErrorDetail:
    """The fields agents branch on (OpenAI's type/code/param, Anthropic's type, Gemini's status)."""
    _, error = _error_object(body)
    message = scrub_secrets(_upstream_message(body) or "The provider refused the request.")
    if error is None:
        return UpstreamErrorDetail(message)

    def text(value: Any) -> str | None:
        return scrub_secrets(value)[:200] if isinstance(value, str) and value else None

    # Gemini's `code` is the HTTP status again and its `status` the error's name.
    kind = text(error.get("type")) or text(error.get("status"))
    return UpstreamErrorDetail(message, kind, text(error.get("code")), text(error.get("param")))


def scrubbed_error_body(body: bytes) -> bytes | None:
    """The provider's JSON error body with every string of its error object scrubbed of secrets
    (for a caller of the provider's own format); None if it is not a JSON error object."""
    data, error = _error_object(body)
    if error is None:
        return None
    return orjson.dumps({**data, "error": _scrubbed(error, 8)})


def _scrubbed(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return scrub_secrets(value)
    if depth <= 0:
        return None  # deeper than any provider's error object: dropped rather than walked
    if isinstance(value, dict):
        return {k: _scrubbed(v, depth - 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v, depth - 1) for v in value]
    return value
