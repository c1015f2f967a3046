"""Values an audit row can always hold, whatever the request carried (issue #15).

A request is audited with what it sent, and what it sent is hostile input: PostgreSQL
refuses a text holding NUL; a lone surrogate (a JSON "\\ud800" escape) is not UTF-8, so
neither the chain's HMAC nor the database driver can encode it; a value longer than its
column, or an integer out of its column's range, fails the whole COPY; orjson refuses a body
nested deeper than 254 levels, an integer beyond 64 bits or a key that is not a string. Any
one of these used to fail the group commit that carried the row, and with it every other
request of that batch (3 such requests among 180 concurrent good ones: 81 good requests got
a 503). Each function here turns whatever it is given into a value its column accepts; the
writer then isolates a row the database refuses all the same (audit/services.py).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import orjson
from django.utils import timezone

REPLACEMENT = "\ufffd"
# NUL, which PostgreSQL cannot store in text, and the surrogate code points, which only
# ever appear alone in a Python str and cannot be encoded as UTF-8.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# orjson's own limit is 254 levels of nesting; a body deeper than that is not stored.
MAX_BODY_DEPTH = 254
INT16_MAX = 32767
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


def clean_text(text: str) -> str:
    """`text` without NUL or lone surrogates (each replaced by U+FFFD, so lengths do not change)."""
    if text.isascii():
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return _UNSTORABLE.sub(REPLACEMENT, text)


def as_text(value: Any) -> str:
    """Any value as a str (bytes decoded as UTF-8, bad bytes replaced); not yet cleaned or cut."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    try:
        return str(value)
    except Exception:  # a hostile __str__: the value is simply not stored
        return ""


def storable_text(value: Any, *, max_length: int, redact: Callable[[str], str] | None = None,
                  margin: int = 0) -> str:
    """`value` as its column stores it: cut to max_length + margin, cleaned, redacted, cut to max_length.

    The margin keeps a secret that straddles the column's end whole until it is redacted; the
    first cut means redaction never sees more than the column plus the margin, whatever was sent.
    """
    text = as_text(value)
    if len(text) > max_length + margin:
        text = text[: max_length + margin]
    text = clean_text(text)
    if redact is not None and text:
        text = redact(text)
    return text[:max_length]


def storable_int(value: Any, *, low: int, high: int, default: int | None) -> int | None:
    """`value` as an integer clamped to [low, high] (a finite float truncated); `default` if it is
    not a number (None, a string, a bool, NaN)."""
    if isinstance(value, float) and math.isfinite(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return min(max(value, low), high)


def storable_time(value: Any) -> datetime:
    """An aware datetime; a request without one is dated now rather than refused."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    return timezone.now()


def body_marker(reason: str) -> str:
    """What is stored instead of a body that cannot be: says why, in the body's own column."""
    return orjson.dumps({"_tollgate": f"body not storable: {clean_text(reason)[:200]}"}).decode()


class _TooDeep(Exception):
    pass


def _cleaned(value: Any, depth: int) -> Any:
    """A copy of a parsed JSON value with its strings (and keys) cleaned; raises _TooDeep."""
    if depth > MAX_BODY_DEPTH:
        raise _TooDeep
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: _cleaned(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cleaned(v, depth + 1) for v in value]
    return value


def body_text(value: Any) -> str:
    """A captured body as text: JSON for a parsed body, the text itself for bytes or str, or a
    marker when it cannot be serialized (too deep, integers beyond 64 bits, anything orjson
    refuses). Not yet cleaned, redacted or cut (redaction.redact_cut does that)."""
    if value is None or isinstance(value, str | bytes | bytearray | memoryview):
        return as_text(value)
    options = orjson.OPT_NON_STR_KEYS
    first: Exception
    try:
        return orjson.dumps(value, default=str, option=options).decode()
    except orjson.JSONEncodeError as exc:
        if "recursion" in str(exc).lower():
            return body_marker(f"nested deeper than {MAX_BODY_DEPTH} levels")
        first = exc
    except Exception as exc:  # a default= that raised, or anything else orjson met
        first = exc
    # A lone surrogate in a string is the usual cause: clean the strings and try once more.
    try:
        return orjson.dumps(_cleaned(value, 0), default=str, option=options).decode()
    except _TooDeep:
        return body_marker(f"nested deeper than {MAX_BODY_DEPTH} levels")
    except RecursionError:
        return body_marker("nested too deep")
    except Exception:
        return body_marker(str(first) or first.__class__.__name__)
