"""Log format for every process (Django, gunicorn, uvicorn, Celery): JSON lines or text.

`logging_config()` builds the dictConfig used both by Django's LOGGING and by
gunicorn's `logconfig_dict` (gateway_site/gunicorn_conf.py), so the master's,
the workers' and the application's lines look the same. This module is imported
by the settings and by gunicorn's master: it must not import Django settings.

Only known fields reach a line (`FIELDS`); request bodies and keys are never
passed to a logger, and anything shaped like a gateway key or a bearer token in
a message is masked as a last line of defence.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any

import orjson

# Extra fields a log call may attach (logger.info(..., extra={...})), in output order.
FIELDS = (
    "request_id", "consumer", "route", "provider", "endpoint", "status", "error_class", "attempts",
    "stream", "prompt_tokens", "completion_tokens", "latency_ms", "overhead_ms", "ttft_ms",
)

# Gateway keys (tg-...), OpenAI/Anthropic-style secrets (sk-...) and bearer tokens.
_SECRET = re.compile(r"\b(tg|sk)-[A-Za-z0-9_\-]{8,}|(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}")
# A key in a URL's query (?key=..., Google's convention, which the gateway accepts): access logs
# write the path with its query.
_QUERY_KEY = re.compile(r"([?&](?:key|api_key|api-key)=)[^&\s\"']*", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    if "key=" in text or "KEY=" in text or "Key=" in text:
        text = _QUERY_KEY.sub(r"\1***", text)
    if "-" not in text and "earer" not in text:
        return text  # the common case costs one scan, not a regex
    return _SECRET.sub(lambda m: (m.group(1) + "-***") if m.group(1) else "Bearer ***", text)


def _iso_time(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, then the known extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": mask_secrets(record.getMessage()),
        }
        attrs = record.__dict__
        for name in FIELDS:
            value = attrs.get(name)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = mask_secrets(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exception"] = mask_secrets(record.exc_text)
        if record.stack_info:
            out["stack"] = mask_secrets(self.formatStack(record.stack_info))
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """A human-readable line, with the known extra fields as key=value pairs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = mask_secrets(super().format(record))
        attrs = record.__dict__
        pairs = [f"{name}={attrs[name]}" for name in FIELDS if attrs.get(name) is not None]
        if not pairs:
            return line
        head, sep, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {' '.join(pairs)}{sep}{rest}"


def logging_config(*, fmt: str, level: str, access_log: bool = False) -> dict[str, Any]:
    """The dictConfig for Django's LOGGING and gunicorn's logconfig_dict."""
    level = level.upper()
    formatter = "json" if fmt == "json" else "text"
    console = {"handlers": ["console"], "level": level, "propagate": False}
    # uvicorn's access lines cost a log call per request and repeat tollgate.requests;
    # without a handler uvicorn skips them altogether.
    access = {"handlers": ["console"] if access_log else [], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {"()": "gateway_site.lib.logs.JsonFormatter"},
            "text": {"()": "gateway_site.lib.logs.TextFormatter"},
        },
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": formatter,
                                 "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["console"], "level": level},
        "loggers": {
            # Django's defaults would print through their own (debug-only) handler.
            "django": console,
            "django.server": console,
            "django.db.backends": {"level": "WARNING"},
            # httpx logs every upstream request at INFO: a second line per request, and a cost.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            "gunicorn.error": console,
            "gunicorn.access": access,
            "uvicorn": console,
            "uvicorn.error": console,
            "uvicorn.access": access,
            "celery": console,
        },
    }
