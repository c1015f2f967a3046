"""Who can read, export and change the audit log: admin UI and admin REST API."""
from __future__ import annotations

import csv
import io

import orjson
import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from audit.models import AuditEvent
from gateway_site.auth_tokens import token_issue
from tests.audit.conftest import add_events

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(personas, django_user_model):
    """carl in compliance, gwen in gateway-admin, ada the superuser, sam staff in no group."""
    personas.compliance.groups.add(Group.objects.get(name="compliance"))
    gwen = django_user_model.objects.create_user("gwen", password="gwen-password-1", is_staff=True)
    gwen.groups.add(Group.objects.get(name="gateway-admin"))
    sam = django_user_model.objects.create_user("sam", password="sam-password-1", is_staff=True)
    add_events(5)
    return {"compliance": personas.compliance, "gateway-admin": gwen, "superuser": personas.admin, "plain": sam}


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def api(user=None, token: str | None = None) -> Client:
    if user is not None:
        token = token_issue(user=user).plaintext
    return Client(HTTP_AUTHORIZATION=f"Token {token}") if token else Client()


def test_the_migration_created_both_groups_with_their_permissions(db):
    compliance = set(Group.objects.get(name="compliance").permissions.values_list("codename", flat=True))
    admins = set(Group.objects.get(name="gateway-admin").permissions.values_list("codename", flat=True))
    assert {"view_auditevent", "export_auditevent"} <= compliance
    assert not {c for c in compliance if c.startswith(("add_", "change_", "delete_"))}
    assert {"view_auditevent", "export_auditevent", "change_consumer", "add_consumer", "change_provider"} <= admins
    assert not {"change_auditevent", "delete_auditevent", "add_auditevent"} & admins


@pytest.mark.parametrize("who", ["compliance", "gateway-admin", "superuser"])
def test_audit_readers_browse_and_filter_the_admin_list(staff, who):
    client = logged_in(staff[who])
    response = client.get(reverse("admin:audit_auditevent_changelist"), {"status__exact": "200"})
    assert response.status_code == 200
    assert b"req_test00000000" in response.content
    event = AuditEvent.objects.first()
    assert client.get(reverse("admin:audit_auditevent_change", args=[event.pk])).status_code == 200


@pytest.mark.parametrize("who", ["compliance", "gateway-admin", "superuser"])
def test_nobody_can_add_change_or_delete_events_in_the_admin(staff, who):
    client = logged_in(staff[who])
    event = AuditEvent.objects.first()
    assert client.get(reverse("admin:audit_auditevent_add")).status_code == 403
    assert client.post(reverse("admin:audit_auditevent_change", args=[event.pk]),
                       {"status": 500}).status_code == 403
    assert client.post(reverse("admin:audit_auditevent_delete", args=[event.pk]),
                       {"post": "yes"}).status_code == 403
    response = client.post(reverse("admin:audit_auditevent_changelist"),
                           {"action": "delete_selected", "_selected_action": [event.pk], "post": "yes"})
    assert AuditEvent.objects.count() == 5
    assert response.status_code in (200, 302)
    assert AuditEvent.objects.get(pk=event.pk).status == 200


def test_compliance_sees_a_body_mode_but_only_gateway_admin_changes_it(staff, personas):
    personas.alice.audit_body_mode = "none"
    personas.alice.save()
    url = reverse("admin:budgets_consumer_change", args=[personas.alice.pk])
    page = logged_in(staff["compliance"]).get(url)  # view only, and only the audit setting
    assert page.status_code == 200
    assert "audit body mode" in page.content.decode().lower() and "usage this period" not in page.content.decode()
    listing = logged_in(staff["compliance"]).get(reverse("admin:budgets_consumer_changelist")).content.decode()
    assert "alice-agent" in listing and "none: no body information" in listing
    data = {"name": "alice-agent", "active": "on", "audit_body_mode": "full",
            **{f"{p}-{k}": v for p in ("keys", "budgets", "rate_limits")
               for k, v in (("TOTAL_FORMS", "0"), ("INITIAL_FORMS", "0"))}}
    assert logged_in(staff["compliance"]).post(url, data).status_code == 403
    assert logged_in(staff["gateway-admin"]).post(url, data).status_code == 302
    personas.alice.refresh_from_db()
    assert personas.alice.audit_body_mode == "full"
    # Nothing else of budgets: the admin API still refuses compliance the consumers.
    assert api(staff["compliance"]).get("/api/admin/consumers/").status_code == 403


def test_staff_outside_the_groups_sees_nothing(staff):
    assert logged_in(staff["plain"]).get(reverse("admin:audit_auditevent_changelist")).status_code == 403
    assert api(staff["plain"]).get("/api/admin/audit-events/").status_code == 403


def test_compliance_exports_a_range_from_the_admin(staff):
    client = logged_in(staff["compliance"])
    assert client.get(reverse("admin:audit_auditevent_export")).status_code == 200
    response = client.get(reverse("admin:audit_auditevent_export"),
                          {"since": "2025-03-01", "until": "2025-03-01", "format": "csv"})
    assert response.status_code == 200 and response.streaming
    assert response["Content-Disposition"].startswith("attachment")
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode("utf-8-sig"))))
    assert len(rows) == 5


def test_the_admin_export_action_streams_the_selection(staff):
    client = logged_in(staff["compliance"])
    ids = list(AuditEvent.objects.values_list("pk", flat=True)[:2])
    response = client.post(reverse("admin:audit_auditevent_changelist"),
                           {"action": "export_jsonl", "_selected_action": ids})
    lines = b"".join(response.streaming_content).splitlines()
    assert len(lines) == 2 and orjson.loads(lines[0])["request_id"].startswith("req_test")


@pytest.mark.parametrize("who", ["compliance", "gateway-admin", "superuser"])
def test_audit_readers_list_filter_and_export_through_the_api(staff, who):
    client = api(staff[who])
    page = client.get("/api/admin/audit-events/", {"consumer": "alice-agent", "status": "200"}).json()
    assert len(page["results"]) == 5
    assert page["results"][0]["consumer"] == "alice-agent" and "cost_usd" in page["results"][0]
    one = client.get(f"/api/admin/audit-events/{page['results'][0]['request_id']}/")
    assert one.status_code == 200
    response = client.get("/api/admin/audit-events/export",
                          {"since": "2025-03-01", "until": "2025-03-02", "consumer": "alice-agent",
                           "format": "csv"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/csv")
    assert len(list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode("utf-8-sig"))))) == 6
    jsonl = client.get("/api/admin/audit-events/export/", {"since": "2025-03-01", "format": "jsonl"})
    assert len(b"".join(jsonl.streaming_content).splitlines()) == 5


def test_the_api_names_the_bad_field(staff):
    client = api(staff["compliance"])
    response = client.get("/api/admin/audit-events/export", {"since": "last week", "format": "csv"})
    assert response.status_code == 400 and "since" in response.json()
    response = client.get("/api/admin/audit-events/export", {"format": "xlsx"})
    assert response.status_code == 400 and "format" in response.json()


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_compliance_cannot_change_anything_through_the_api(staff, method):
    client = api(staff["compliance"])
    request_id = AuditEvent.objects.first().request_id
    url = "/api/admin/audit-events/" if method == "post" else f"/api/admin/audit-events/{request_id}/"
    assert getattr(client, method)(url, data={}, content_type="application/json").status_code == 405
    assert AuditEvent.objects.count() == 5


def test_anonymous_and_bad_tokens_get_nothing(staff):
    assert api().get("/api/admin/audit-events/").status_code == 401
    assert api(token="0" * 40).get("/api/admin/audit-events/export?format=csv").status_code == 401
    assert Client().get(reverse("admin:audit_auditevent_changelist")).status_code == 302  # to the login page


def test_the_export_streams_asynchronously_under_asgi(staff):
    """Under ASGI a synchronous iterator would be collected into memory first; ours is async."""
    from asgiref.sync import async_to_sync
    from django.test import AsyncClient

    token = token_issue(user=staff["compliance"]).plaintext

    async def fetch() -> tuple[bool, bytes]:
        response = await AsyncClient().get("/api/admin/audit-events/export", {"format": "jsonl"},
                                           headers={"Authorization": f"Token {token}"})
        return response.is_async, b"".join([chunk async for chunk in response.streaming_content])

    is_async, body = async_to_sync(fetch)()
    assert is_async and len(body.splitlines()) == 5
