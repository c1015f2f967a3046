from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from gateway_site.auth_tokens import token_issue, token_revoke


@pytest.fixture
def staff(staff) -> SimpleNamespace:
    """The shared staff (gwen in gateway-admin, carl in compliance), each with an API token, and
    the token of rita (gateway-admin), since deleted."""
    retired = get_user_model().objects.create_user("rita", "rita@example.com", "rita-password-1", is_staff=True)
    retired.groups.add(Group.objects.get(name="gateway-admin"))
    revoked = token_issue(user=retired)
    token_revoke(token=revoked.token)  # as the admin's Revoke action or `api_token --revoke-others` do
    return SimpleNamespace(
        admin=staff.admin, compliance=staff.compliance,
        admin_token=token_issue(user=staff.admin).plaintext,
        compliance_token=token_issue(user=staff.compliance).plaintext,
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


@pytest.fixture
def with_credentials(staff) -> None:
    """gwen may also choose providers' credential references and base URLs (the gateway-credentials group)."""
    staff.admin.groups.add(Group.objects.get(name="gateway-credentials"))
