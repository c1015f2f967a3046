"""Blanking secrets out of text: gateway keys from log lines, provider secrets from upstream errors.

Django's `django.request` logger writes request paths ("Not Found: /admin/<path>"), gunicorn's
access log writes URLs: a key pasted into a URL would otherwise reach the logs (RedactKeys).

A provider's error message may name the gateway's own credential ("Incorrect API key provided:
sk-proj-***abcd"), its organisation or project: `scrub_secrets` removes those before the message
is passed on to an agent (issue #15; docs/reliability.md, Upstream errors).
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


# What a provider's error text may carry of the operator's account. Each pattern starts with a
# literal and every quantifier is bounded, none nested: a failed attempt stops after a few
# characters, so a scrub is linear in the text (tests/security/test_upstream_errors.py times
# adversarial input). The lookbehinds keep words that merely contain "sk-" or "org-" ("task-").
_EDGE = r"(?<![A-Za-z0-9_])"
_SECRETS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("tg-", KEY_PATTERN, REDACTED),
    # sk-..., sk-ant-..., sk-proj-..., and masked forms such as sk-proj-***abcd or sk-abc****wxyz.
    ("sk-", re.compile(_EDGE + r"sk-[A-Za-z0-9_*\-]{1,512}"), "sk-[redacted]"),
    ("AIza", re.compile(_EDGE + r"AIza[A-Za-z0-9_\-]{8,512}"), "AIza[redacted]"),
    # A masked key on its own: ***abcd, abc***wxyz (what a provider shows of a key).
    ("***", re.compile(r"\*{3,64}[A-Za-z0-9_\-]{0,64}"), "[redacted]"),
    ("org-", re.compile(_EDGE + r"org-[A-Za-z0-9_\-]{4,128}"), "org-[redacted]"),
    ("proj_", re.compile(_EDGE + r"proj_[A-Za-z0-9_\-]{4,128}"), "proj_[redacted]"),
)
_BEARER = re.compile(r"(?i)\bbearer\s{1,32}[A-Za-z0-9._~+/=*\-]{1,1024}")
MAX_SCRUBBED_CHARS = 2000


def scrub_secrets(text: str) -> str:
    """`text` (its first MAX_SCRUBBED_CHARS) without key fragments, bearer tokens, organisation and
    project ids. Each pattern runs only when a substring search (in C) says it could match."""
    text = text[:MAX_SCRUBBED_CHARS]
    for literal, pattern, replacement in _SECRETS:
        if literal in text:
            text = pattern.sub(replacement, text)
    if "earer" in text:
        text = _BEARER.sub("Bearer [redacted]", text)
    return text
