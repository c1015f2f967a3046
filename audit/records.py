"""From a finished request to its audit row: the record the proxy hands over, and the values
stored for it (issue #15). Every value is made storable here, whatever the request carried
(audit/storable.py), so that one request's input can never fail the batch that carries
other requests' rows; the writer isolates a row the database refuses all the same."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings

from audit.chain import TOKEN_FIELDS
from audit.models import AuditEvent, BodyMode
from audit.redaction import Redactor, redact_cut, redactor
from audit.storable import (
    INT16_MAX,
    INT32_MAX,
    INT64_MAX,
    body_text,
    clean_text,
    storable_int,
    storable_text,
    storable_time,
)

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class AuditRecord:
    """A finished request as the proxy hands it over: plain values, nothing redacted yet."""

    time: datetime
    request_id: str
    endpoint: str
    status: int | None = None
    error_class: str = ""
    consumer_id: int | None = None
    consumer_name: str = ""
    key_prefix: str = ""
    route: str = ""
    provider: str = ""
    upstream_model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_micros: int = 0
    latency_us: int = 0
    ttft_us: int | None = None
    attempts: int = 0
    client_ip: str = ""
    user_agent: str = ""
    body_mode: str = BodyMode.NONE
    request_body: Any = None  # the parsed JSON request, bytes or text
    response_body: Any = None  # bytes sent to the client (already cut by capture_limit)
    usage_source: str | None = None  # "provider" | "estimated" | None (no usage)
    # Token classes (issue #16), plain ints (audit imports nothing of budgets): parts of
    # prompt_tokens (cache reads, 5-minute and 1-hour cache writes) and of completion_tokens (reasoning).
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    # Literal secrets to redact wherever they appear (e.g. the provider credential).
    secrets: tuple[str, ...] = field(default=(), repr=False)


# Request parameters kept in `metadata` mode: scalars only, never message content.
_METADATA_SKIP = frozenset({"messages", "system", "tools", "tool_choice", "functions", "contents", "prompt",
                            "input", "metadata", "user", "response_format", "prediction"})


def _metadata(body: Any) -> str:
    if not isinstance(body, dict):
        return ""
    summary: dict[str, Any] = {}
    for name, value in body.items():
        if name in _METADATA_SKIP or not isinstance(name, str):
            continue
        if isinstance(value, bool | int | float) or value is None:
            summary[name] = value
        elif isinstance(value, str):
            summary[name] = value[:200]
    messages = body.get("messages")
    if isinstance(messages, list):
        summary["message_count"] = len(messages)
    tools = body.get("tools")
    if isinstance(tools, list):
        summary["tool_count"] = len(tools)
    return body_text(summary)


# Each text column's size, from the model: a value is cut to it (after redaction) before it is stored.
_MAX_LENGTH: dict[str, int] = {f.name: f.max_length for f in AuditEvent._meta.fields if f.max_length}
# Room beyond a short column's size, so a secret that straddles its end is redacted whole.
_SHORT_MARGIN = 256


def _text(value: Any, column: str, redact: Redactor | None = None, secrets: tuple[str, ...] = ()) -> str:
    if redact is None:
        return storable_text(value, max_length=_MAX_LENGTH[column])
    margin = max([_SHORT_MARGIN, *(len(s) for s in secrets)])
    return storable_text(value, max_length=_MAX_LENGTH[column], margin=margin,
                         redact=lambda text: redact(text, secrets))


def _body_mode(value: Any) -> str:
    return value if value in BodyMode.values else BodyMode.NONE


def event_values(record: AuditRecord) -> tuple:
    """A record's column values in CHAIN_FIELDS order after seq and prev_hash, up to the token classes
    (audit.services adds format, lane and lane_seq): every text made
    storable, redacted and cut to its column, every number in its column's range, every body
    serialized (or a marker saying why it could not be). Never raises: a record that cannot be
    converted at all is stored in its reduced form (`reduced_values`)."""
    try:
        return _event_values(record)
    except Exception as exc:  # a bug or a value nobody foresaw: still one row for the request
        logger.exception("audit: request %r could not be converted; stored in reduced form",
                         getattr(record, "request_id", "?"))
        return reduced_values(record, reason=f"{exc.__class__.__name__}: {exc}")


def _event_values(record: AuditRecord) -> tuple:
    s = tuple(secret for secret in record.secrets if isinstance(secret, str))
    r = redactor()
    request_body = response_body = ""
    limit = settings.TOLLGATE_AUDIT_BODY_MAX_CHARS
    body_mode = _body_mode(record.body_mode)
    if body_mode == BodyMode.FULL:
        request_body = redact_cut(body_text(record.request_body), limit=limit, secrets=s, using=r)
        response_body = redact_cut(body_text(record.response_body), limit=limit, secrets=s, using=r)
    elif body_mode == BodyMode.METADATA:
        request_body = redact_cut(_metadata(record.request_body), limit=limit, secrets=s, using=r)
    return (
        storable_time(record.time),
        _text(record.request_id, "request_id"),
        storable_int(record.consumer_id, low=-INT64_MAX, high=INT64_MAX, default=None),
        _text(record.consumer_name, "consumer_name"),
        _text(record.key_prefix, "key_prefix", r, s),
        _text(record.route, "route", r, s),
        _text(record.provider, "provider"),
        _text(record.upstream_model, "upstream_model", r, s),
        _text(record.endpoint, "endpoint"),
        storable_int(record.status, low=0, high=INT16_MAX, default=None),
        _text(record.error_class, "error_class"),
        storable_int(record.prompt_tokens, low=0, high=INT32_MAX, default=None),
        storable_int(record.completion_tokens, low=0, high=INT32_MAX, default=None),
        storable_int(record.cost_micros, low=-INT64_MAX, high=INT64_MAX, default=0),
        storable_int(record.latency_us, low=0, high=INT64_MAX, default=0),
        storable_int(record.ttft_us, low=0, high=INT64_MAX, default=None),
        storable_int(record.attempts, low=0, high=INT16_MAX, default=0),
        _text(record.client_ip, "client_ip"),
        _text(record.user_agent, "user_agent", r, s),
        body_mode,
        request_body,
        response_body,
        record.usage_source if record.usage_source in ("provider", "estimated") else None,
        *(storable_int(getattr(record, name), low=0, high=INT32_MAX, default=None) for name in TOKEN_FIELDS),
    )


REDUCED = "audit_reduced"


def _safe(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception:
        return None


def reduced_values(record: AuditRecord, *, reason: str) -> tuple:
    """The row kept of a request whose full row could not be stored: who, when, what answer
    (request id, time, status, error class, consumer and key, endpoint, client address), every
    other column empty, `error_class` "audit_reduced" if it had none, and the reason in
    `request_body` as {"_tollgate": "audit row reduced: ..."}."""
    def text(name: str, column: str) -> str:
        return _safe(lambda: _text(getattr(record, name, ""), column)) or ""

    def number(name: str, **bounds: Any) -> Any:
        return _safe(lambda: storable_int(getattr(record, name, None), **bounds))

    note = orjson.dumps({"_tollgate": f"audit row reduced: {clean_text(reason)[:300]}"}).decode()
    return (
        storable_time(getattr(record, "time", None)),
        text("request_id", "request_id"),
        number("consumer_id", low=-INT64_MAX, high=INT64_MAX, default=None),
        text("consumer_name", "consumer_name"),
        # The key's visible prefix is redacted like any text ("tg-" + 7 characters never matches a key).
        _safe(lambda: _text(record.key_prefix, "key_prefix", redactor(), ())) or "",
        "", "", "",
        text("endpoint", "endpoint"),
        number("status", low=0, high=INT16_MAX, default=None),
        text("error_class", "error_class") or REDUCED,
        None, None, 0,
        number("latency_us", low=0, high=INT64_MAX, default=0) or 0,
        None, 0,
        text("client_ip", "client_ip"),
        "", BodyMode.NONE, note, "",
        None,  # usage_source
        None, None, None, None,  # token classes
    )
