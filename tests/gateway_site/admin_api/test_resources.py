"""Each resource of the admin API: list, create, read, update, delete, as a gateway-admin with a token."""
from __future__ import annotations

import pytest

from budgets.keys import key_digest
from budgets.models import ApiKey, Budget, Consumer, RateLimit
from proxy.models import Deployment, ModelRoute, Provider
from tests.proxy.client import chat

pytestmark = pytest.mark.django_db
HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def test_it_creates_lists_updates_and_deletes_a_consumer(as_admin):
    created = as_admin.post("/api/admin/consumers/", {"name": "team-x", "description": "X"}, format="json")
    assert created.status_code == 201, created.content
    cid = created.json()["id"]
    listing = as_admin.get("/api/admin/consumers/", {"search": "team"}).json()
    assert [c["name"] for c in listing["results"]] == ["team-x"]
    assert as_admin.patch(f"/api/admin/consumers/{cid}/", {"active": False}, format="json").json()["active"] is False
    assert as_admin.delete(f"/api/admin/consumers/{cid}/").status_code == 204
    assert not Consumer.objects.filter(pk=cid).exists()


def test_issuing_a_key_returns_its_plaintext_once(as_admin, personas, demo_route):
    response = as_admin.post("/api/admin/keys/", {"consumer": personas.bob.pk, "name": "api", "expires_in_days": 30},
                             format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    key = ApiKey.objects.get(pk=body["id"])
    assert key.digest == key_digest(body["plaintext"]) and body["prefix"] == body["plaintext"][:10]
    assert body["status"] == "active" and body["expires_at"]
    # Never again: not on the key, not in the list.
    assert "plaintext" not in as_admin.get(f"/api/admin/keys/{key.pk}/").json()
    assert body["plaintext"] not in as_admin.get("/api/admin/keys/").content.decode()
    assert chat(body["plaintext"], HELLO).status_code == 200


def test_revoking_a_key_through_the_api_refuses_it_at_once(as_admin, personas, demo_route,
                                                            django_capture_on_commit_callbacks):
    key = ApiKey.objects.get(consumer=personas.bob)
    assert chat(personas.bob_key, HELLO).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = as_admin.post(f"/api/admin/keys/{key.pk}/revoke/")
    assert response.json()["status"] == "revoked"
    assert chat(personas.bob_key, HELLO).status_code == 401


def test_rotating_a_key_keeps_the_old_one_for_the_grace_period(as_admin, personas, demo_route,
                                                               django_capture_on_commit_callbacks):
    key = ApiKey.objects.get(consumer=personas.bob)
    Budget.objects.create(key=key, metric="requests", limit=100)
    with django_capture_on_commit_callbacks(execute=True):
        response = as_admin.post(f"/api/admin/keys/{key.pk}/rotate/", {"grace_seconds": 3600}, format="json")
    assert response.status_code == 201, response.content
    new, previous = response.json()["key"], response.json()["previous"]
    assert previous["expires_at"] and previous["status"] == "active"
    assert Budget.objects.filter(key_id=new["id"], metric="requests", limit=100).exists()
    assert chat(new["plaintext"], HELLO).status_code == 200
    assert chat(personas.bob_key, HELLO).status_code == 200  # still in its grace period
    with django_capture_on_commit_callbacks(execute=True):
        as_admin.post(f"/api/admin/keys/{new['id']}/rotate/", {"grace_seconds": 0}, format="json")
    assert chat(new["plaintext"], HELLO).status_code == 401


def test_keys_filter_by_consumer_and_status(as_admin, personas):
    alice_keys = as_admin.get("/api/admin/keys/", {"consumer": personas.alice.pk}).json()["results"]
    assert {k["status"] for k in alice_keys} == {"active", "revoked"}
    revoked = as_admin.get("/api/admin/keys/", {"status": "revoked"}).json()["results"]
    assert [k["name"] for k in revoked] == ["old"]
    assert as_admin.patch(f"/api/admin/keys/{alice_keys[0]['id']}/", {"name": "renamed"},
                          format="json").json()["name"] == "renamed"


def test_budgets_and_rate_limits_round_trip(as_admin, personas):
    budget = as_admin.post("/api/admin/budgets/", {"consumer": personas.alice.pk, "metric": "requests",
                                                   "limit": 1000, "period": "day"}, format="json")
    assert budget.status_code == 201, budget.content
    rate = as_admin.post("/api/admin/rate-limits/", {"consumer": personas.alice.pk, "requests": 10,
                                                     "window_seconds": 60}, format="json")
    assert rate.status_code == 201, rate.content
    assert as_admin.get("/api/admin/budgets/", {"consumer": personas.alice.pk}).json()["count"] == 1
    assert as_admin.patch(f"/api/admin/budgets/{budget.json()['id']}/", {"limit": 5},
                          format="json").json()["limit"] == 5
    usage = as_admin.get(f"/api/admin/consumers/{personas.alice.pk}/usage/").json()
    assert usage[0]["metric"] == "requests" and usage[0]["limit"] == 5 and usage[0]["remaining"] == 5
    assert as_admin.delete(f"/api/admin/rate-limits/{rate.json()['id']}/").status_code == 204
    assert not RateLimit.objects.exists()


def test_providers_routes_and_deployments_round_trip(as_admin, with_credentials):
    provider = as_admin.post("/api/admin/providers/", {
        "name": "openai-like", "kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1",
        "api_key_env": "TOLLGATE_PROVIDER_OPENAI_LIKE_KEY", "extra_headers": {"x-team": "a"}}, format="json")
    assert provider.status_code == 201, provider.content
    route = as_admin.post("/api/admin/routes/", {"model": "smart", "failover_statuses": [429, 503]}, format="json")
    assert route.status_code == 201, route.content
    deployment = as_admin.post("/api/admin/deployments/", {
        "route": route.json()["id"], "provider": provider.json()["id"], "upstream_model": "gpt-4o",
        "weight": 3, "priority": 0}, format="json")
    assert deployment.status_code == 201, deployment.content
    assert deployment.json()["breaker"] == "closed"
    got = as_admin.get(f"/api/admin/routes/{route.json()['id']}/").json()
    assert got["deployments"][0]["provider"] == "openai-like"
    # A provider still in use is not deleted: 409 with a message.
    refused = as_admin.delete(f"/api/admin/providers/{provider.json()['id']}/")
    assert refused.status_code == 409 and "in use" in refused.json()["error"]["message"]
    assert as_admin.delete(f"/api/admin/deployments/{deployment.json()['id']}/").status_code == 204
    assert as_admin.delete(f"/api/admin/providers/{provider.json()['id']}/").status_code == 204
    assert not Provider.objects.exists() and ModelRoute.objects.count() == 1 and not Deployment.objects.exists()


def test_usage_summary_counts_the_audit_log(as_admin, personas, demo_route):
    for _ in range(3):
        assert chat(personas.alice_key, HELLO).status_code == 200
    summary = as_admin.get("/api/admin/usage/", {"days": 7}).json()
    assert summary["totals"]["requests"] == 3 and summary["totals"]["tokens"] > 0
    assert summary["consumers"][0]["name"] == "alice-agent"
    assert len(summary["days"]) == 7 and summary["days"][-1]["requests"] == 3
    assert summary["providers"][0]["name"] == "sandbox"
