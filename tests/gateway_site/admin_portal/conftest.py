from __future__ import annotations

import pytest


@pytest.fixture
def admin_client(client, staff):
    client.force_login(staff.admin)
    return client


@pytest.fixture
def compliance_client(client, staff):
    client.force_login(staff.compliance)
    return client
