from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from gateway_site.auth_tokens import token_issue, token_revoke


@pytest.fixture(autouse=True)
def fast_passwords(settings) -> None:
    # Four users per test: the default PBKDF2 would spend seconds on each test.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(personas) -> SimpleNamespace:
    """gwen in gateway-admin, carl (the personas' compliance officer) in compliance; each with an API token."""
    gwen = get_user_model().objects.create_user("gwen", "gwen@example.com", "gwen-password-1", is_staff=True)
    gwen.groups.add(Group.objects.get(name="gateway-admin"))
    personas.compliance.groups.add(Group.objects.get(name="compliance"))
    retired = get_user_model().objects.create_user("rita", "rita@example.com", "rita-password-1", is_staff=True)
    retired.groups.add(Group.objects.get(name="gateway-admin"))
    revoked = token_issue(user=retired)
    token_revoke(token=revoked.token)  # as the admin's Revoke action or `api_token --revoke-others` do
    return SimpleNamespace(
        admin=gwen, compliance=personas.compliance,
        admin_token=token_issue(user=gwen).plaintext,
        compliance_token=token_issue(user=personas.compliance).plaintext,
        revoked_token=revoked.plaintext,
    )


def token_client(token: str | None = None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.fixture
def as_admin(staff) -> APIClient:
    return token_client(staff.admin_token)


@pytest.fixture
def as_compliance(staff) -> APIClient:
    return token_client(staff.compliance_token)
