from __future__ import annotations

import pytest
from django.test import override_settings

from audit.redaction import redact, redact_cut

GATEWAY_KEY = "tg-" + "Ab1_-" * 8 + "xyz"


@pytest.mark.parametrize(("text", "gone"), [
    (f"key {GATEWAY_KEY} here", GATEWAY_KEY),
    ("openai sk-proj-abcdefghijklmnop1234", "sk-proj-abcdefghijklmnop1234"),
    ("anthropic sk-ant-api03-abcdefghij_KLMNOP", "sk-ant-api03-abcdefghij_KLMNOP"),
    ("gemini AIzaSyD-abcdefghijklmnopqrstuvwxyz0123", "AIzaSyD-abcdefghijklmnopqrstuvwxyz0123"),
    ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
    ('{"api_key": "s3cr3t-value-123"}', "s3cr3t-value-123"),
    ("write to ops+audit@corp.example.org", "ops+audit@corp.example.org"),
    ("visa 4111-1111-1111-1111 ok", "4111-1111-1111-1111"),
])
def test_it_redacts_secrets_and_personal_data(text, gone):
    assert gone not in redact(text)
    assert "[REDACTED" in redact(text)


def test_it_leaves_numbers_that_are_not_card_numbers():
    assert redact("tokens 1234567890123 and 4111 1111 1111 1112") == "tokens 1234567890123 and 4111 1111 1111 1112"


def test_it_redacts_literal_secrets_of_any_shape():
    assert redact("creds: hunter2-prod", secrets=("hunter2-prod",)) == "creds: [REDACTED]"


@override_settings(TOLLGATE_AUDIT_REDACT_PATTERNS=[r"EMP-\d{6}"], TOLLGATE_AUDIT_REDACT_EMAILS=False)
def test_configured_patterns_apply_and_builtin_ones_can_be_switched_off():
    assert redact("employee EMP-123456 at a@b.io") == "employee [REDACTED] at a@b.io"


def test_the_cut_never_leaves_half_a_secret():
    text = "x" * 95 + GATEWAY_KEY
    stored = redact_cut(text, limit=100)
    assert GATEWAY_KEY[:8] not in stored.replace("x", "")
    assert stored.endswith("…[cut]")
    assert redact_cut("short", limit=100) == "short"
