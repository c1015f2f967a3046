"""Server-sent events, parsed incrementally by the spec (any of CRLF, LF, CR ends a line).

Gemini ends its events with CRLF pairs, OpenAI and Anthropic with LF pairs; one
parser handles all of them, whatever the chunk boundaries.
"""
from __future__ import annotations

import re

_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEParser:
    """Feed raw bytes, get back complete events as (event name or None, data bytes)."""

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._event: bytes | None = None
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, bytes]]:
        buffer = self._buffer + chunk
        # A CR at the very end may be the first half of a CRLF: wait for the next chunk.
        hold = buffer.endswith(b"\r")
        if hold:
            buffer = buffer[:-1]
        lines = _LINE_END.split(buffer)
        self._buffer = lines.pop() + (b"\r" if hold else b"")
        events: list[tuple[str | None, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    event = self._event.decode("utf-8", "replace") if self._event is not None else None
                    events.append((event, b"\n".join(self._data)))
                self._event, self._data = None, []
                continue
            if line.startswith(b":"):
                continue  # a comment (keep-alive)
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
        return events

    def close(self) -> list[tuple[str | None, bytes]]:
        """Whatever a stream that ended without a final blank line left behind."""
        rest = self._buffer.rstrip(b"\r")
        self._buffer = b""
        return self.feed(rest + b"\n\n") if rest or self._data else []


def sse_event(name: str | None, data: bytes) -> bytes:
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + data + b"\n\n"
