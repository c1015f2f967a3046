"""The sandbox's ASGI plumbing: read a bounded body, send JSON and errors, cut a stream on purpose.

Plain ASGI with no framework: the sandbox is the upstream of a benchmark of thousands of requests
per second and thousands of concurrent slow streams, and must never be the bottleneck.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from proxy.sandbox.errors import RETRY_AFTER_STATUSES, error_body, failure_body
from proxy.sandbox.model import Wire

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 32 * 1024 * 1024
JSON = b"application/json"
SSE = b"text/event-stream; charset=utf-8"


class SandboxDisconnect(Exception):
    """Raised inside a stream so that the server drops the connection mid-body (disconnect_after)."""


class _HideSandboxDisconnect(logging.Filter):
    """The server logs every exception of an app with a traceback; ours are on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], SandboxDisconnect))


def quiet_disconnect_logs() -> None:
    server_logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideSandboxDisconnect) for f in server_logger.filters):
        server_logger.addFilter(_HideSandboxDisconnect())


class ClientGone(Exception):
    pass


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body
    parts, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        part = message.get("body", b"")
        size += len(part)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge
        parts.append(part)
        if not message.get("more_body"):
            return b"".join(parts)


async def send_json(send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps(payload)
    headers = [(b"content-type", JSON), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, wire: Wire, status: int, message: str, param: str | None = None) -> None:
    extra = [(b"retry-after", b"1")] if status in RETRY_AFTER_STATUSES else None
    await send_json(send, status, error_body(wire, status, message, param), extra)


async def send_failure(send: Send, wire: Wire, status: int, *, retry_after: int | None, realistic: bool) -> None:
    """A simulated failure (fail_status), with the knobs' Retry-After and error text."""
    if retry_after is None:
        extra = [(b"retry-after", b"1")] if status in RETRY_AFTER_STATUSES else None
    else:
        extra = [(b"retry-after", str(retry_after).encode())]
    await send_json(send, status, failure_body(wire, status, realistic), extra)
