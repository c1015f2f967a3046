"""A logging filter that blanks gateway keys wherever they appear (issue 8; docs/reliability.md).

Django's `django.request` logger writes request paths ("Not Found: /admin/<path>"), gunicorn's
access log writes URLs: a key pasted into a URL would otherwise reach the logs.
"""
from __future__ import annotations

import logging
import re

# Keys are `tg-` and 43 URL-safe base64 characters (budgets/keys.py); shorter runs are not keys.
KEY_PATTERN = re.compile(r"tg-[A-Za-z0-9_-]{20,}")
REDACTED = "tg-[redacted]"


class RedactKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "tg-" in message and KEY_PATTERN.search(message):
            record.msg, record.args = KEY_PATTERN.sub(REDACTED, message), None
        return True
