from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient


@pytest.fixture
def staff(staff) -> SimpleNamespace:
    """The shared staff (gwen in gateway-admin, carl in compliance), each with an API token, and
    the token of rita (gateway-admin), since deleted."""
    retired = get_user_model().objects.create_user("rita", "rita@example.com", "rita-password-1", is_staff=True)
    retired.groups.add(Group.objects.get(name="gateway-admin"))
    revoked_token = Token.objects.create(user=retired).key
    Token.objects.filter(user=retired).delete()  # `drf_create_token -r` or the admin deletes tokens this way
    return SimpleNamespace(
        admin=staff.admin, compliance=staff.compliance,
        admin_token=Token.objects.create(user=staff.admin).key,
        compliance_token=Token.objects.create(user=staff.compliance).key,
        revoked_token=revoked_token,
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
