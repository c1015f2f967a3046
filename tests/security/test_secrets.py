"""Known keys never reach a log line, an audit row, an export, an admin page or an error body
(issue 8; docs/reliability.md)."""
from __future__ import annotations

import logging

import pytest
from django.test import Client

from audit.models import AuditEvent
from gateway_site.lib.secretfilter import RedactKeys
from tests.proxy.client import call

pytestmark = pytest.mark.django_db


def test_the_log_filter_blanks_keys_from_any_logger(personas):
    record = logging.LogRecord("django.request", logging.WARNING, __file__, 1, "Not Found: %s", (
        f"/admin/{personas.alice_key}",), None)
    RedactKeys().filter(record)
    assert personas.alice_key not in record.getMessage() and "tg-[redacted]" in record.getMessage()


def test_the_configured_handlers_carry_the_filter(settings):
    assert all("redact_keys" in handler.get("filters", []) for handler in settings.LOGGING["handlers"].values())


def test_known_keys_appear_nowhere_after_a_run(personas, demo_route, capfd, tmp_path):
    keys = [personas.alice_key, personas.bob_key, personas.revoked_key]
    bodies = []
    for key in keys:
        for path in ("/v1/chat/completions", "/v1/messages"):
            body = {"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": f"my key is {key}"}]}
            bodies.append(call("POST", path, key=key, body=body).content)
        bodies.append(call("POST", "/v1/chat/completions", key=f"{key}x", body={"model": "demo"}).content)
        bodies.append(call("GET", f"/v1/{key}", key=None).content)
    admin = Client()
    admin.force_login(personas.admin)
    for key in keys:
        bodies.append(admin.get(f"/admin/{key}/").content)
    for url in ("/admin/audit/auditevent/", "/admin/budgets/apikey/", "/admin/budgets/consumer/"):
        page = admin.get(url)
        assert page.status_code == 200
        bodies.append(page.content)
    rows = [str(row) for row in AuditEvent.objects.values()]
    logged = capfd.readouterr()
    for key in keys:
        leaked = [body[:300] for body in bodies if key.encode() in body]
        assert not leaked, leaked
        assert not any(key in row for row in rows), "a key in an audit row"
        assert key not in logged.out + logged.err, "a key in a log line"
