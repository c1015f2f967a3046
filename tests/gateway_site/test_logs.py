"""Log lines: one JSON object per line with the request's fields, never a key; text when asked."""
from __future__ import annotations

import logging
import sys

import orjson

from gateway_site.lib.logs import JsonFormatter, TextFormatter, logging_config


def record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("tollgate.requests", logging.INFO, __file__, 1, message, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_a_line_is_one_json_object_with_the_request_fields():
    line = JsonFormatter().format(record("request finished", request_id="req_1", consumer="alice-agent",
                                         route="smart", provider="openai-main", status=200, latency_ms=12.5,
                                         unrelated="dropped"))
    assert "\n" not in line
    data = orjson.loads(line)
    assert data["level"] == "info" and data["logger"] == "tollgate.requests"
    assert data["message"] == "request finished"
    assert data["time"].endswith("Z")
    assert {k: data[k] for k in ("request_id", "consumer", "route", "provider", "status", "latency_ms")} == {
        "request_id": "req_1", "consumer": "alice-agent", "route": "smart", "provider": "openai-main",
        "status": 200, "latency_ms": 12.5}
    assert "unrelated" not in data


def test_keys_and_bearer_tokens_in_a_message_are_masked():
    key = "tg-0123456789abcdefghijklmnopqrstuv"
    line = JsonFormatter().format(record("got %s with Authorization: Bearer %s and sk-proj-abcdefgh12345",
                                         key, "opaque.token-value"))
    assert key not in line
    assert "opaque.token-value" not in line
    assert "sk-proj-abcdefgh12345" not in line
    assert "tg-***" in line


def test_an_exception_stays_on_the_same_line():
    try:
        raise ValueError("boom")
    except ValueError:
        line = JsonFormatter().format(record("failed", exc_info=sys.exc_info()))
    data = orjson.loads(line)
    assert "ValueError: boom" in data["exception"]
    assert "\n" not in line


def test_text_format_puts_the_fields_after_the_message():
    line = TextFormatter().format(record("request finished", request_id="req_1", status=429))
    assert line.endswith("request finished request_id=req_1 status=429")


def test_the_config_covers_django_gunicorn_and_uvicorn():
    config = logging_config(fmt="json", level="warning")
    assert config["handlers"]["console"]["formatter"] == "json"
    for name in ("django", "gunicorn.error", "uvicorn.error", "celery"):
        assert config["loggers"][name]["handlers"] == ["console"]
    assert config["root"]["level"] == "WARNING"
    # No access-log handler unless asked: uvicorn then skips the per-request access line.
    assert config["loggers"]["uvicorn.access"]["handlers"] == []
    assert logging_config(fmt="text", level="info", access_log=True)["loggers"]["uvicorn.access"]["handlers"]
