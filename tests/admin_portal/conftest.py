from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group


@pytest.fixture(autouse=True)
def fast_passwords(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def staff(personas) -> SimpleNamespace:
    """gwen in gateway-admin (not a superuser: the group's permissions are what is tested), carl in compliance."""
    gwen = get_user_model().objects.create_user("gwen", "gwen@example.com", "gwen-password-1", is_staff=True)
    gwen.groups.add(Group.objects.get(name="gateway-admin"))
    personas.compliance.groups.add(Group.objects.get(name="compliance"))
    return SimpleNamespace(admin=gwen, compliance=personas.compliance)


@pytest.fixture
def admin_client(client, staff):
    client.force_login(staff.admin)
    return client


@pytest.fixture
def compliance_client(client, staff):
    client.force_login(staff.compliance)
    return client
