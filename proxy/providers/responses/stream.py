"""Internal stream events in, the Responses API's event stream out (the caller side's stream encode).

The order is OpenAI's: `response.created` and `response.in_progress`; per output item
`output_item.added`, its parts and deltas, their `.done` events and `output_item.done`; one
item open at a time, except tool calls, which stay open together until something else
starts or the stream ends (providers may interleave their arguments). The last event,
`response.completed` (or `response.incomplete`), carries the whole Response with usage.
Every event has a `sequence_number` counting from 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from proxy.providers.ir import (
    Finish,
    Reasoning,
    ReasoningDelta,
    StreamError,
    StreamEvent,
    StreamFinish,
    StreamStart,
    StreamUsage,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from proxy.providers.responses.common import (
    custom_tool_names,
    encrypted_content,
    event,
    failed_error,
    new_id,
    response_id,
    status_of,
    wants_encrypted_reasoning,
)
from proxy.providers.responses.response import (
    call_item,
    custom_input,
    message_item,
    reasoning_item,
    response_object,
    text_part,
)


@dataclass(slots=True)
class _Item:
    """An output item being streamed: its place in `output` and what has come for it so far."""

    index: int
    item: dict[str, Any]
    pieces: list[str] = field(default_factory=list)
    signature: list[str] = field(default_factory=list)
    summary_open: bool = False

    @property
    def ident(self) -> str:
        return self.item["id"]

    def text(self) -> str:
        return "".join(self.pieces)


class StreamEncoder:
    """One stream's events, encoded as they come: `encode` per event, then `tail()` and
    `terminal` (held by the relay until the audit row is durable) or `finish()` for both,
    or `error_event` if the stream breaks.

    `request` is the caller's body (echoed in the Response; names the freeform tools);
    `upstream_wire` is the provider's format, so that its reasoning signatures can be
    carried in `encrypted_content` for the caller to send back.
    """

    def __init__(self, *, request: dict[str, Any] | None = None, model: str = "",
                 upstream_wire: str | None = None) -> None:
        self.request = request or {}
        self.model = model
        self.upstream_wire = upstream_wire
        self.custom = custom_tool_names(self.request)
        self.include_encrypted = wants_encrypted_reasoning(self.request)
        self.ident = ""
        self.sequence = 0
        self.started = False
        self.items: list[dict[str, Any]] = []
        self.message: _Item | None = None
        self.reasoning: _Item | None = None
        self.tools: dict[int, _Item] = {}
        self.finish_reason: Finish = "end"
        self.usage = Usage()
        self._terminal: bytes | None = None

    # --- plumbing

    def _event(self, kind: str, **payload: Any) -> bytes:
        out = event(kind, self.sequence, payload)
        self.sequence += 1
        return out

    def _response(self, status: str, error: dict[str, str] | None = None) -> dict[str, Any]:
        usage = self.usage if status in ("completed", "incomplete") else None
        return response_object(ident=self.ident, model=self.model, status=status, output=list(self.items),
                               usage=usage, request=self.request, finish=self.finish_reason, error=error)

    def _start(self, ident: str = "", model: str = "") -> bytes:
        self.started = True
        self.ident = response_id(ident)
        self.model = model or self.model
        snapshot = self._response("in_progress")
        return (self._event("response.created", response=snapshot)
                + self._event("response.in_progress", response=snapshot))

    def _open(self, item: dict[str, Any]) -> tuple[_Item, bytes]:
        opened = _Item(len(self.items), item)
        self.items.append(item)
        return opened, self._event("response.output_item.added", output_index=opened.index, item=dict(item))

    def _done(self, opened: _Item, item: dict[str, Any]) -> bytes:
        self.items[opened.index] = item
        return self._event("response.output_item.done", output_index=opened.index, item=item)

    # --- closing items

    def _close_message(self) -> bytes:
        opened, self.message = self.message, None
        if opened is None:
            return b""
        text = opened.text()
        status = "incomplete" if status_of(self.finish_reason)[0] == "incomplete" else "completed"
        where = {"item_id": opened.ident, "output_index": opened.index, "content_index": 0}
        return (self._event("response.output_text.done", **where, text=text, logprobs=[])
                + self._event("response.content_part.done", **where, part=text_part(text))
                + self._done(opened, message_item(opened.ident, [text], status)))

    def _close_reasoning(self) -> bytes:
        opened, self.reasoning = self.reasoning, None
        if opened is None:
            return b""
        text = opened.text()
        out = b""
        if opened.summary_open:
            where = {"item_id": opened.ident, "output_index": opened.index, "summary_index": 0}
            out += (self._event("response.reasoning_summary_text.done", **where, text=text)
                    + self._event("response.reasoning_summary_part.done", **where,
                                  part={"type": "summary_text", "text": text}))
        encrypted = None
        if self.include_encrypted and opened.signature:
            encrypted = encrypted_content(Reasoning(text, "".join(opened.signature), wire=self.upstream_wire))
        return out + self._done(opened, reasoning_item(opened.ident, text, encrypted))

    def _close_tools(self) -> bytes:
        out = b""
        for opened in self.tools.values():
            arguments = opened.text()
            where = {"item_id": opened.ident, "output_index": opened.index}
            item = dict(opened.item, status="completed")
            if item["type"] == "custom_tool_call":
                item["input"] = custom_input(arguments)
                if item["input"]:
                    out += self._event("response.custom_tool_call_input.delta", **where, delta=item["input"])
                out += self._event("response.custom_tool_call_input.done", **where, input=item["input"])
            else:
                item["arguments"] = arguments
                out += self._event("response.function_call_arguments.done", **where, arguments=arguments)
            out += self._done(opened, item)
        self.tools.clear()
        return out

    def _close_all(self) -> bytes:
        return self._close_reasoning() + self._close_message() + self._close_tools()

    # --- the events

    def encode(self, ev: StreamEvent) -> bytes:
        if isinstance(ev, StreamStart):
            return b"" if self.started else self._start(ev.id, ev.model)
        out = b"" if self.started else self._start()
        if isinstance(ev, TextDelta):
            if not ev.text:
                return out
            if self.message is None:
                out += self._close_reasoning() + self._close_tools()
                self.message, added = self._open(message_item(new_id("msg"), [], "in_progress"))
                out += added + self._event("response.content_part.added", item_id=self.message.ident,
                                           output_index=self.message.index, content_index=0, part=text_part(""))
            self.message.pieces.append(ev.text)
            return out + self._event("response.output_text.delta", item_id=self.message.ident,
                                     output_index=self.message.index, content_index=0, delta=ev.text, logprobs=[])
        if isinstance(ev, ReasoningDelta):
            return out + self._reasoning_delta(ev)
        if isinstance(ev, ToolCallStart):
            out += self._close_reasoning() + self._close_message()
            call = ToolCall(ev.id, ev.name, "")
            item = call_item(call, custom=ev.name in self.custom, status="in_progress")
            if item["type"] == "custom_tool_call":
                item.pop("status")
            self.tools[ev.index], added = self._open(item)
            return out + added
        if isinstance(ev, ToolCallDelta):
            opened = self.tools.get(ev.index)
            if opened is None or not ev.arguments:
                return out
            opened.pieces.append(ev.arguments)
            if opened.item["type"] == "custom_tool_call":
                return out  # its raw input is inside JSON until the call is whole
            return out + self._event("response.function_call_arguments.delta", item_id=opened.ident,
                                     output_index=opened.index, delta=ev.arguments)
        if isinstance(ev, StreamFinish):
            self.finish_reason = ev.finish
        elif isinstance(ev, StreamUsage):
            self._add_usage(ev)
        elif isinstance(ev, StreamError):
            return out + self.error_event(ev.message, "upstream_stream_error", ev.status or 502)
        return out

    def _reasoning_delta(self, ev: ReasoningDelta) -> bytes:
        out = b""
        if self.reasoning is None:
            out += self._close_message() + self._close_tools()
            self.reasoning, added = self._open(reasoning_item(new_id("rs"), "", None))
            out += added
        opened = self.reasoning
        if ev.signature:
            opened.signature.append(ev.signature)
        if ev.text:
            where = {"item_id": opened.ident, "output_index": opened.index, "summary_index": 0}
            if not opened.summary_open:
                opened.summary_open = True
                out += self._event("response.reasoning_summary_part.added", **where,
                                   part={"type": "summary_text", "text": ""})
            opened.pieces.append(ev.text)
            out += self._event("response.reasoning_summary_text.delta", **where, delta=ev.text)
        return out

    def _add_usage(self, ev: StreamUsage) -> None:
        usage = self.usage
        if ev.input_tokens is not None:
            usage.input_tokens = ev.input_tokens
        if ev.output_tokens is not None:
            usage.output_tokens = ev.output_tokens
        # Providers that report usage twice (start and end) report these once, or the same twice.
        usage.cache_read_tokens = ev.cache_read_tokens or usage.cache_read_tokens
        usage.cache_write_tokens = ev.cache_write_tokens or usage.cache_write_tokens
        usage.cache_write_1h_tokens = ev.cache_write_1h_tokens or usage.cache_write_1h_tokens
        usage.reasoning_tokens = ev.reasoning_tokens or usage.reasoning_tokens

    # --- the end

    def tail(self) -> bytes:
        """The `.done` events of whatever is still open, before the terminal event."""
        return (b"" if self.started else self._start()) + self._close_all()

    @property
    def terminal(self) -> bytes:
        """`response.completed` (or `response.incomplete`) with the whole Response; built once."""
        if self._terminal is None:
            head = self.tail()  # empty when tail() has run, as the relay does first
            status, _ = status_of(self.finish_reason)
            self._terminal = head + self._event(f"response.{status}", response=self._response(status))
        return self._terminal

    def finish(self) -> bytes:
        """`tail()` and `terminal` together, for a driver that need not hold the last event."""
        return self.tail() + self.terminal

    def error_event(self, message: str, code: str, status: int = 502) -> bytes:
        """An `error` event, then `response.failed` (which is what Codex and the SDKs read)."""
        out = b"" if self.started else self._start()
        return (out + self._event("error", code=code, message=message, param=None)
                + self._event("response.failed", response=self._response("failed", failed_error(message, status))))
