"""What every provider adapter shares: the upstream error type and the adapter base."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson

from proxy.routing import ProviderInfo
from proxy.upstream import Timeouts, UpstreamResponse

if TYPE_CHECKING:
    from proxy.providers.ir import ChatRequest, ChatResponse, StreamEvent

# Statuses that mean "try another deployment" (DESIGN §1 step 6); a route may name its own.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 529})


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
        return ProviderError(
            f"Provider '{self.provider.name}' answered {status}: {message}",
            error_class=f"upstream_{status}",
            retryable=status in RETRYABLE_STATUSES,
            status=status,
            body=body,
            content_type=response.headers.get("content-type"),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )


def _upstream_message(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace").strip() or None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:500]
        if isinstance(error, str):
            return error[:500]
    return None
