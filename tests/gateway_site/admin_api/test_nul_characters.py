from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from gateway_site.auth_tokens import token_issue


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["json", "multipart"])
def test_a_nul_character_is_a_400_not_a_500(personas, fmt):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=personas.admin).plaintext}")
    response = client.post("/api/admin/consumers/", {"name": "nul-test", "description": "a\x00b"}, format=fmt)
    assert response.status_code == 400, response.content
    assert "NUL" in response.json()["error"]["message"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/admin/audit-events/", "/api/admin/audit-events/export", "/api/admin/usage/"])
def test_a_nul_character_in_an_audit_filter_is_a_400_not_a_500(personas, path):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=personas.admin).plaintext}")
    response = client.get(path, {"consumer": "a\x00b"})
    assert response.status_code == 400, response.content
    assert "consumer" in response.json()
