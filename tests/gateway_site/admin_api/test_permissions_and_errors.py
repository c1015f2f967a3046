"""Who may do what in the admin API, and what errors look like."""
from __future__ import annotations

import pytest

from budgets.models import ApiKey, Budget, Team
from tests.gateway_site.admin_api.conftest import token_client

pytestmark = pytest.mark.django_db
RESOURCES = ["teams", "consumers", "keys", "budgets", "rate-limits", "providers", "routes", "deployments"]


@pytest.mark.parametrize("resource", [*RESOURCES, "usage", "audit-events"])
def test_gateway_admin_reads_everything(as_admin, resource):
    assert as_admin.get(f"/api/admin/{resource}/").status_code == 200


@pytest.mark.parametrize("resource", RESOURCES)
def test_compliance_can_neither_read_nor_change_configuration(as_compliance, resource):
    assert as_compliance.get(f"/api/admin/{resource}/").status_code == 403
    response = as_compliance.post(f"/api/admin/{resource}/", {}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_compliance_reads_usage_and_the_audit_log(as_compliance):
    assert as_compliance.get("/api/admin/usage/").status_code == 200
    assert as_compliance.get("/api/admin/audit-events/").status_code == 200
    assert as_compliance.get("/api/admin/audit-events/export", {"format": "csv"}).status_code == 200


def test_compliance_cannot_revoke_a_key(as_compliance, personas):
    key = ApiKey.objects.get(consumer=personas.bob)
    assert as_compliance.post(f"/api/admin/keys/{key.pk}/revoke/").status_code == 403
    key.refresh_from_db()
    assert key.revoked_at is None


@pytest.mark.parametrize("resource", [*RESOURCES, "usage", "audit-events"])
def test_anonymous_and_revoked_tokens_get_401(staff, resource):
    for client in (token_client(), token_client(staff.revoked_token), token_client("not-a-token")):
        response = client.get(f"/api/admin/{resource}/")
        assert response.status_code == 401, resource
        assert response["WWW-Authenticate"] == "Token"
        assert response.json()["error"]["message"]


def test_a_token_of_a_deactivated_user_gets_401(staff):
    staff.admin.is_active = False
    staff.admin.save()
    assert token_client(staff.admin_token).get("/api/admin/consumers/").status_code == 401


@pytest.mark.parametrize(("path", "body", "field"), [
    ("consumers", {"name": "no spaces allowed"}, "name"),
    ("consumers", {"name": "alice-agent"}, "name"),
    ("budgets", {"metric": "requests", "limit": -1}, "limit"),
    ("budgets", {"metric": "bananas", "limit": 1}, "metric"),
    ("budgets", {"metric": "tokens", "limit": 1, "timezone": "Mars/Olympus"}, "timezone"),
    ("rate-limits", {"requests": "many"}, "requests"),
    ("providers", {"name": "p", "kind": "openai", "base_url": "not a url"}, "base_url"),
    ("providers", {"name": "p", "kind": "openai", "base_url": "http://localhost/v1", "extra_headers": {"a": [1]}},
     "extra_headers"),
    ("routes", {"model": "m", "failover_statuses": [200]}, "failover_statuses"),
    ("keys", {"consumer": 999999}, "consumer"),
    ("keys", {"expires_in_days": 0}, "expires_in_days"),
])
def test_bad_input_is_a_400_naming_the_field(as_admin, with_credentials, path, body, field):
    response = as_admin.post(f"/api/admin/{path}/", body, format="json")
    assert response.status_code == 400, response.content
    data = response.json()
    assert field in data and data["error"]["code"] == "invalid"
    assert f"{field}:" in data["error"]["message"]


def test_a_budget_with_two_owners_or_none_is_a_400(as_admin, personas):
    key = ApiKey.objects.get(consumer=personas.bob)
    team = Team.objects.create(name="research")
    for owners in ({"consumer": personas.bob.pk, "key": key.pk}, {"team": team.pk, "consumer": personas.bob.pk},
                   {"team": team.pk, "key": key.pk}, {}):
        response = as_admin.post("/api/admin/budgets/", {"metric": "tokens", "limit": 5, **owners}, format="json")
        assert response.status_code == 400
        assert "exactly one owner: a team, a consumer or a key" in response.json()["error"]["message"]
    assert not Budget.objects.exists()
    response = as_admin.post("/api/admin/rate-limits/", {"consumer": personas.bob.pk, "requests": 1, "tokens": 1},
                             format="json")
    assert response.status_code == 400 and "requests or tokens" in response.json()["error"]["message"]


def test_malformed_json_is_a_400_and_unknown_ids_a_404(as_admin):
    response = as_admin.generic("POST", "/api/admin/consumers/", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "parse_error"
    response = as_admin.get("/api/admin/consumers/424242/")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    assert as_admin.get("/api/admin/keys/", {"consumer": "abc"}).status_code == 400


def test_the_schema_and_its_docs_are_served_without_a_cdn(as_admin, client, staff):
    schema = as_admin.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    assert {"/api/admin/keys/{id}/rotate/", "/api/admin/consumers/", "/api/admin/audit-events/export/"} <= set(paths)
    client.force_login(staff.admin)
    docs = client.get("/api/docs/").content.decode()
    assert "swagger-ui" in docs and "cdn" not in docs.lower() and "/static/drf_spectacular_sidecar/" in docs
    assert token_client().get("/api/schema/").status_code == 401
