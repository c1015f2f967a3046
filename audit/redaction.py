"""Redaction of everything the audit log stores as text (DESIGN §6).

Secrets are always redacted: gateway keys, provider keys, bearer tokens, and any
literal secret the caller passes (the provider credential used for the request).
E-mail addresses, card numbers and the configured patterns are redacted by
setting. A text is cut to its stored size plus a margin, redacted, then cut to
size: a cut never leaves half a secret behind, and redaction never sees more than
the column holds plus the margin, however much was sent.

Every pattern runs on request data in time linear in its length (issue #15): each
quantifier is bounded, none is nested in another (an optional, `?`, aside), and a
pattern whose start could overlap a run it scans is pinned to the run's start. The
e-mail pattern before this rule, `[A-Za-z0-9._%+-]+@...`, scanned from every
position of a long run to its end: 100 kB of digits took 27 s, holding the GIL
(tests/benchmarks/bench_redaction.py prints each pattern's time on adversarial input).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from re import _parser as _sre_parse  # type: ignore[attr-defined]  # re's own parser: what each pattern is made of

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from audit.storable import clean_text

REDACTED = "[REDACTED]"

# (pattern, replacement, cheap pre-check on the lower-cased text). Python's re
# costs ~40 ns per character for a pattern without a literal start, so each
# runs only when a substring search (in C) says it could match. A key's tail is
# bounded well beyond any real key's length (OpenAI project keys: 164 characters).
_SECRET_PATTERNS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (r"tg-[A-Za-z0-9_\-]{10,512}", "[REDACTED:gateway-key]", ("tg-",)),
    (r"sk-ant-[A-Za-z0-9_\-]{10,512}", "[REDACTED:provider-key]", ("sk-ant-",)),
    (r"sk-[A-Za-z0-9_\-]{10,512}", "[REDACTED:provider-key]", ("sk-",)),
    (r"AIza[0-9A-Za-z_\-]{30,512}", "[REDACTED:provider-key]", ("aiza",)),
    (r"(?i)\bbearer\s{1,32}[A-Za-z0-9._~+/=\-]{8,1024}", "Bearer [REDACTED]", ("bearer",)),
    (r"(?i)\b(x-api-key|x-app-key|api[_-]?key|authorization)(\"?\s{0,32}[:=]\s{0,32}\"?)[^\s\"',}]{8,1024}",
     r"\1\2[REDACTED]", ("api-key", "api_key", "apikey", "x-app-key", "authorization")),
)
# The local part starts only where a run of local-part characters starts (the lookbehind),
# and is possessive: a run not followed by "@" fails once, instead of once for each of its
# positions. Domain labels exclude the dot that ends them, so they cannot overlap it either.
_LOCAL = r"A-Za-z0-9._%+\-"
_EMAIL = rf"(?<![{_LOCAL}])[{_LOCAL}]{{1,256}}+@(?:[A-Za-z0-9\-]{{1,63}}+\.){{1,16}}[A-Za-z]{{2,63}}"
# Pinned at the start of a run of digits; at most 19 digits and 18 separators per start.
_CARD = r"(?<![\d.])(?:\d[ \-]?){12,18}\d(?![\d.])"
BUILTIN_PATTERNS: tuple[str, ...] = (*(p for p, _, _ in _SECRET_PATTERNS), _EMAIL, _CARD)

# Configured patterns (TOLLGATE_AUDIT_REDACT_PATTERNS) are held to the same rule, checked when
# the app loads (audit/apps.py): a pattern that could take quadratic or exponential time on a
# hostile request is refused with a message saying how to write it.
MAX_REPEAT_BOUND = 1024
_REPEATS = ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT")


def _walk_problem(items: list, inside_repeat: bool) -> str:
    for op, arg in items:
        name = str(op)
        if name in ("GROUPREF", "GROUPREF_EXISTS"):
            return "a backreference can take exponential time"
        if name in _REPEATS:
            _low, high, body = arg
            if high == _sre_parse.MAXREPEAT or high > MAX_REPEAT_BOUND:
                return (f"an unbounded quantifier (+, *, {{n,}}) can take quadratic time; give it an upper "
                        f"bound of at most {MAX_REPEAT_BOUND}, as in \\d{{1,20}}")
            # A possessive repeat never gives back what it took, so only its count can backtrack.
            if inside_repeat and high > 1 and name != "POSSESSIVE_REPEAT":
                return ("a quantifier inside a quantified group can take exponential time (unless it is "
                        "possessive, as in \\d{1,20}+)")
            problem = _walk_problem(body, inside_repeat or high > 1)
        elif name == "BRANCH":
            if inside_repeat:
                return "an alternation (|) inside a quantified group can take exponential time"
            problem = next((p for branch in arg[1] if (p := _walk_problem(branch, inside_repeat))), "")
        elif name in ("SUBPATTERN",):
            problem = _walk_problem(arg[-1], inside_repeat)
        elif name in ("ATOMIC_GROUP",):
            problem = _walk_problem(arg, inside_repeat)
        elif name in ("ASSERT", "ASSERT_NOT"):
            problem = _walk_problem(arg[1], inside_repeat)
        else:
            problem = ""
        if problem:
            return problem
    return ""


def pattern_problem(pattern: str) -> str:
    """Why `pattern` may not run on request data (it fails to compile, or its time is not
    linear in the text's length); empty if it may."""
    try:
        re.compile(pattern)
        parsed = _sre_parse.parse(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"not a valid regular expression: {exc}"
    return _walk_problem(list(parsed), False)


def check_configured_patterns() -> None:
    """Refuse to start with a configured redaction pattern that is invalid or not linear."""
    for pattern in settings.TOLLGATE_AUDIT_REDACT_PATTERNS:
        problem = pattern_problem(pattern)
        if problem:
            raise ImproperlyConfigured(f"TOLLGATE_AUDIT_REDACT_PATTERNS: {pattern!r}: {problem}.")


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
        for pattern in extra:  # checked at start-up too (audit/apps.py); here for settings changed since
            if problem := pattern_problem(pattern):
                raise ImproperlyConfigured(f"TOLLGATE_AUDIT_REDACT_PATTERNS: {pattern!r}: {problem}.")
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
