"""Redaction of everything the audit log stores as text (DESIGN §6).

Secrets are always redacted: gateway keys, provider keys, bearer tokens, and any
literal secret the caller passes (the provider credential used for the request).
E-mail addresses, card numbers and the configured patterns are redacted by
setting. A text is cut to its stored size plus a margin, made storable, redacted,
then cut to size: a cut never leaves half a secret behind, and redaction never
sees megabytes.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from django.conf import settings

from audit.storable import clean_text

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


class Redactor:
    """The patterns of one configuration, compiled once."""

    def __init__(self, *, emails: bool, cards: bool, extra: tuple[str, ...]) -> None:
        self.secret = [(re.compile(p), r, hints) for p, r, hints in _SECRET_PATTERNS]
        self.email = re.compile(_EMAIL) if emails else None
        self.card = re.compile(_CARD) if cards else None
        self.configured = [re.compile(p) for p in extra]
        # One search that says whether any secret pattern could match (most texts: no).
        hints = {h for _, _, hs in _SECRET_PATTERNS for h in hs}
        self.any_hint = re.compile("|".join(re.escape(h) for h in sorted(hints)), re.IGNORECASE)

    def __call__(self, text: str, secrets: Iterable[str] = ()) -> str:
        if not text:
            return text
        for secret in secrets:
            if secret and len(secret) >= 4 and secret in text:
                text = text.replace(secret, REDACTED)
        if self.any_hint.search(text):
            lowered = text.lower()
            for pattern, replacement, hints in self.secret:
                if any(hint in lowered for hint in hints):
                    text = pattern.sub(replacement, text)
        if self.email is not None and "@" in text:
            text = self.email.sub("[REDACTED:email]", text)
        if self.card is not None and len(text) >= 13 and sum(map(text.count, "0123456789")) >= 13:
            text = self.card.sub(_card_sub, text)
        for pattern in self.configured:
            text = pattern.sub(REDACTED, text)
        return text


@lru_cache(maxsize=8)
def _redactor(emails: bool, cards: bool, extra: tuple[str, ...]) -> Redactor:
    return Redactor(emails=emails, cards=cards, extra=extra)


def redactor() -> Redactor:
    """The redactor for the current settings (look it up once per event, not per field)."""
    return _redactor(settings.TOLLGATE_AUDIT_REDACT_EMAILS, settings.TOLLGATE_AUDIT_REDACT_CARDS,
                     tuple(settings.TOLLGATE_AUDIT_REDACT_PATTERNS))


def _card_sub(match: re.Match) -> str:
    return "[REDACTED:card]" if _luhn_ok(match.group(0)) else match.group(0)


def redact(text: str, *, secrets: Iterable[str] = ()) -> str:
    """`text` with secrets and the configured patterns replaced by markers."""
    return redactor()(text, secrets)


# Room beyond the stored size for a secret that straddles the cut, so that it is redacted
# whole before the cut (a literal secret longer than this widens it).
CUT_MARGIN = 1024


def redact_cut(text: str, *, limit: int, secrets: Iterable[str] = (), using: Redactor | None = None) -> str:
    """`text` as stored: cut to `limit` plus a margin, made storable (no NUL, no lone surrogate),
    redacted, then cut to `limit` characters (marking the cut)."""
    if limit <= 0 or not text:
        return ""
    margin = max([CUT_MARGIN, *(len(s) for s in secrets)])
    # Redacting megabytes that will be cut anyway is waste, and the margin keeps a
    # secret that straddles the limit whole, so it is redacted before the cut.
    was_cut = len(text) > limit + margin
    text = (using or redactor())(clean_text(text[: limit + margin]), secrets)
    if was_cut or len(text) > limit:
        return text[:limit] + "…[cut]"
    return text
