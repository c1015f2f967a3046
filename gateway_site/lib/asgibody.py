"""Reading an ASGI request body in memory, within a size limit and a time limit.

Django's ASGI handler reads the whole body into a SpooledTemporaryFile (a file on disk past
FILE_UPLOAD_MAX_MEMORY_SIZE) before any view can refuse it, and waits for it as long as the
client likes. The proxy's entry point (gateway_site/asgi.py) reads with this instead: bytes are
counted as they arrive and reading stops at the first byte over the limit, or when the time is up.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from django.core.exceptions import RequestAborted

Refusal = Literal["too_large", "timeout"]
TOO_LARGE: Refusal = "too_large"
TIMEOUT: Refusal = "timeout"

Receive = Callable[[], Awaitable[dict[str, Any]]]


def body_expected(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bool, int | None]:
    """(whether a body follows the headers, its declared length if any), from the raw ASGI headers."""
    declared: int | None = None
    chunked = False
    for name, value in headers:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                declared = None  # the server refuses a malformed one before the app sees it
        elif name == b"transfer-encoding":
            chunked = True
    return chunked or bool(declared), declared


async def read_body_within(receive: Receive, *, limit: int, seconds: float) -> tuple[bytes, Refusal | None]:
    """Read the whole body within `seconds`: (the body, None), or (b"", why reading stopped early).

    A body that comes in one message (nearly all) is passed on as it came, without a copy.
    Raises RequestAborted when the client disconnects. What was not read stays unread: the
    caller answers and closes the connection.
    """
    size = 0
    parts: list[bytes] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestAborted()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    return b"", TOO_LARGE
                if chunk:
                    parts.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        return b"", TIMEOUT
    if len(parts) == 1:
        return parts[0], None
    return b"".join(parts), None
