"""The token classes and the chain's lane and format (issues #16, #18) in the audit API and the admin."""
from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from audit.models import AuditEvent
from gateway_site.auth_tokens import token_issue
from tests.audit.conftest import add_events, add_v1_events

pytestmark = pytest.mark.django_db

CLASSES = {"cache_read_tokens": 900, "cache_write_tokens": 40, "cache_write_1h_tokens": 20, "reasoning_tokens": 7}


def test_the_api_shows_token_classes_lane_and_format(staff):
    add_v1_events(1)
    add_events(1, **CLASSES)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=staff.compliance).plaintext}")
    response = client.get("/api/admin/audit-events/")
    assert response.status_code == 200
    new, old = response.json()["results"]
    assert {name: new[name] for name in CLASSES} == CLASSES
    assert (new["format"], new["lane"], new["lane_seq"]) == (2, 0, 2)
    assert {name: old[name] for name in CLASSES} == dict.fromkeys(CLASSES)
    assert (old["format"], old["lane"], old["lane_seq"]) == (None, 0, 1)
    export = b"".join(client.get("/api/admin/audit-events/export", {"format": "csv"}).streaming_content).decode()
    header, *rows = export.lstrip("\ufeff").splitlines()
    assert "cache_read_tokens,cache_write_tokens,cache_write_1h_tokens,reasoning_tokens" in header
    assert len(rows) == 2


def test_the_admin_lists_and_shows_the_token_classes(client, staff):
    add_events(1, **CLASSES)
    client.force_login(staff.compliance)
    listing = client.get("/admin/audit/auditevent/")
    assert listing.status_code == 200
    assert b"cache read tokens" in listing.content.lower() and b">900<" in listing.content
    detail = client.get(f"/admin/audit/auditevent/{AuditEvent.objects.get().pk}/change/")
    assert detail.status_code == 200
    for label in (b"Cache write 1h tokens", b"Reasoning tokens", b"Lane seq", b"Format"):
        assert label in detail.content
