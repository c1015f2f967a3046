"""Redaction of everything the audit log stores as text (DESIGN §6).

Secrets are always redacted: gateway keys, provider keys, bearer tokens, and any
literal secret the caller passes (the provider credential used for the request).
E-mail addresses, card numbers and the configured patterns are redacted by
setting. Redaction runs before the size cut, so a cut can never leave half a
secret behind.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from django.conf import settings

REDACTED = "[REDACTED]"

# (pattern, replacement, cheap pre-check on the lower-cased text). Python's re
# costs ~40 ns per character for a pattern without a literal start, so each
# runs only when a substring search (in C) says it could match.
_SECRET_PATTERNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (r"tg-[A-Za-z0-9_\-]{10,}", "[REDACTED:gateway-key]", ("tg-",)),
    (r"sk-ant-[A-Za-z0-9_\-]{10,}", "[REDACTED:provider-key]", ("sk-ant-",)),
    (r"sk-[A-Za-z0-9_\-]{10,}", "[REDACTED:provider-key]", ("sk-",)),
    (r"AIza[0-9A-Za-z_\-]{30,}", "[REDACTED:provider-key]", ("aiza",)),
    (r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}", "Bearer [REDACTED]", ("bearer",)),
    (r"(?i)\b(x-api-key|x-app-key|api[_-]?key|authorization)(\"?\s*[:=]\s*\"?)[^\s\"',}]{8,}",
     r"\1\2[REDACTED]", ("api-key", "api_key", "apikey", "x-app-key", "authorization")),
)
_EMAIL = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"
_CARD = r"(?<![\d.])(?:\d[ \-]?){12,18}\d(?![\d.])"


def _luhn_ok(candidate: str) -> bool:
    digits = [int(c) for c in candidate if c.isdigit()]
    total = 0
    for index, digit in enumerate(reversed(digits)):
        if index % 2 == 1:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


@lru_cache(maxsize=8)
def _compiled(emails: bool, cards: bool, extra: tuple[str, ...]) -> tuple:
    secret = [(re.compile(p), r, hints) for p, r, hints in _SECRET_PATTERNS]
    configured = [re.compile(p) for p in extra]
    return (secret, re.compile(_EMAIL) if emails else None, re.compile(_CARD) if cards else None, configured)


def _card_sub(match: re.Match) -> str:
    return "[REDACTED:card]" if _luhn_ok(match.group(0)) else match.group(0)


def redact(text: str, *, secrets: Iterable[str] = ()) -> str:
    """`text` with secrets and the configured patterns replaced by markers."""
    if not text:
        return text
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    secret_patterns, email, card, configured = _compiled(
        settings.TOLLGATE_AUDIT_REDACT_EMAILS,
        settings.TOLLGATE_AUDIT_REDACT_CARDS,
        tuple(settings.TOLLGATE_AUDIT_REDACT_PATTERNS),
    )
    lowered = text.lower()
    for pattern, replacement, hints in secret_patterns:
        if any(hint in lowered for hint in hints):
            text = pattern.sub(replacement, text)
    if email is not None and "@" in text:
        text = email.sub("[REDACTED:email]", text)
    if card is not None and sum(map(text.count, "0123456789")) >= 13:
        text = card.sub(_card_sub, text)
    for pattern in configured:
        text = pattern.sub(REDACTED, text)
    return text


def redact_cut(text: str, *, limit: int, secrets: Iterable[str] = ()) -> str:
    """Redact, then cut to `limit` characters (marking the cut)."""
    if limit <= 0 or not text:
        return ""
    # Redacting megabytes that will be cut anyway is waste; the margin keeps a
    # secret that straddles the limit whole, so it is redacted before the cut.
    was_cut = len(text) > limit + 1024
    text = redact(text[: limit + 1024], secrets=secrets)
    if was_cut or len(text) > limit:
        return text[:limit] + "…[cut]"
    return text
