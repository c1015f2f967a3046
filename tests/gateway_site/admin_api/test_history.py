"""Every change through the admin API is in the admin's history (LogEntry), which compliance reads and exports."""
from __future__ import annotations

import csv
import io
import json

import orjson
import pytest
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.contrib.auth import get_user_model
from django.test import Client

from budgets.models import ApiKey, Consumer
from tests.gateway_site.admin_api.conftest import token_client

pytestmark = pytest.mark.django_db


def entries_for(obj) -> list[LogEntry]:
    return list(LogEntry.objects.filter(object_id=str(obj.pk), content_type__model=obj._meta.model_name)
                .order_by("id"))


def test_an_api_patch_writes_the_admins_change_message(as_admin, staff, personas):
    response = as_admin.patch(f"/api/admin/consumers/{personas.bob.pk}/",
                              {"description": "nightly jobs", "active": False, "name": "bob-batch"}, format="json")
    assert response.status_code == 200
    [entry] = entries_for(personas.bob)
    assert entry.action_flag == CHANGE and entry.user == staff.admin and entry.object_repr == "bob-batch"
    # The admin's own JSON, with the form's labels; the unchanged name is not listed.
    assert json.loads(entry.change_message) == [{"changed": {"fields": ["Description", "Active"]}}]
    assert entry.get_change_message() == "Changed Description and Active."


def test_api_creates_and_deletes_are_recorded(as_admin, staff):
    created = as_admin.post("/api/admin/consumers/", {"name": "carol-cli"}, format="json").json()
    consumer = Consumer.objects.get(pk=created["id"])
    budget = as_admin.post("/api/admin/budgets/", {"consumer": consumer.pk, "metric": "requests", "limit": 10},
                           format="json").json()
    assert as_admin.delete(f"/api/admin/budgets/{budget['id']}/").status_code == 204
    assert as_admin.delete(f"/api/admin/consumers/{consumer.pk}/").status_code == 204
    flags = [(e.content_type.model, e.action_flag, e.change_message)
             for e in LogEntry.objects.filter(user=staff.admin).order_by("id")]
    assert flags == [("consumer", ADDITION, '[{"added": {}}]'), ("budget", ADDITION, '[{"added": {}}]'),
                     ("budget", DELETION, ""), ("consumer", DELETION, "")]


def test_key_issue_revoke_and_rotate_are_recorded_as_the_admin_records_them(as_admin, personas):
    issued = as_admin.post("/api/admin/keys/", {"consumer": personas.bob.pk, "name": "api"}, format="json").json()
    key = ApiKey.objects.get(pk=issued["id"])
    rotated = as_admin.post(f"/api/admin/keys/{key.pk}/rotate/", {"grace_seconds": 0}, format="json").json()
    successor = ApiKey.objects.get(pk=rotated["key"]["id"])
    as_admin.post(f"/api/admin/keys/{successor.pk}/revoke/")
    as_admin.post(f"/api/admin/keys/{successor.pk}/revoke/")  # idempotent: recorded once
    assert [(e.action_flag, e.change_message[:12]) for e in entries_for(key)] == [
        (ADDITION, '[{"added": {'), (CHANGE, "Rotated: rep")]
    assert [(e.action_flag, e.change_message[:12]) for e in entries_for(successor)] == [
        (ADDITION, "Issued by ro"), (CHANGE, "Revoked.")]
    assert issued["plaintext"] not in "".join(LogEntry.objects.values_list("change_message", flat=True))


def test_provider_and_route_changes_are_recorded(as_admin, demo_route):
    as_admin.patch(f"/api/admin/routes/{demo_route.pk}/", {"max_retries": 3}, format="json")
    [entry] = entries_for(demo_route)
    assert json.loads(entry.change_message) == [{"changed": {"fields": ["Max retries"]}}]


def test_compliance_reads_and_exports_the_history(as_admin, as_compliance, personas):
    as_admin.patch(f"/api/admin/consumers/{personas.alice.pk}/", {"description": "=HYPERLINK(1)"}, format="json")
    listed = as_compliance.get("/api/admin/history/", {"model": "budgets.consumer", "user": "gwen"})
    assert listed.status_code == 200
    [row] = listed.json()["results"]
    assert row["action"] == "change" and row["object_repr"] == "alice-agent" and row["fields"] == ["Description"]
    assert row["summary"] == "Changed Description."
    assert as_compliance.get(f"/api/admin/history/{row['id']}/").json() == row

    jsonl = as_compliance.get("/api/admin/history/export", {"format": "jsonl", "action": "change"})
    assert jsonl.status_code == 200 and jsonl["Content-Type"].startswith("application/x-ndjson")
    [record] = [orjson.loads(line) for line in b"".join(jsonl.streaming_content).splitlines()]
    assert record == row

    exported = as_compliance.get("/api/admin/history/export", {"format": "csv", "since": "2000-01-01"})
    assert 'filename="admin-history-20000101T000000.csv"' in exported["Content-Disposition"]
    reader = csv.DictReader(io.StringIO(b"".join(exported.streaming_content).decode("utf-8-sig")))
    [csv_row] = [r for r in reader if r["id"] == str(row["id"])]
    assert csv_row["user"] == "gwen" and csv_row["fields"] == "Description"
    assert csv_row["object_repr"] == "alice-agent"


def test_a_long_history_exports_whole_in_both_formats(as_compliance, personas):
    LogEntry.objects.bulk_create([LogEntry(user=personas.admin, action_flag=CHANGE, object_repr=f"row {n}",
                                           change_message="[]") for n in range(450)])
    jsonl = b"".join(as_compliance.get("/api/admin/history/export", {"format": "jsonl"}).streaming_content)
    assert [orjson.loads(line)["object_repr"] for line in jsonl.splitlines()] == [f"row {n}" for n in range(450)]
    text = b"".join(as_compliance.get("/api/admin/history/export", {"format": "csv"}).streaming_content)
    assert len(list(csv.DictReader(io.StringIO(text.decode("utf-8-sig"))))) == 450


def test_the_history_filters_refuse_bad_values(as_compliance):
    assert as_compliance.get("/api/admin/history/", {"action": "edit"}).status_code == 400
    assert as_compliance.get("/api/admin/history/", {"since": "yesterday"}).status_code == 400
    assert as_compliance.get("/api/admin/history/export", {"format": "xlsx"}).status_code == 400


def test_compliance_cannot_write_and_leaves_no_history(as_compliance, personas):
    response = as_compliance.patch(f"/api/admin/consumers/{personas.bob.pk}/", {"description": "x"}, format="json")
    assert response.status_code == 403
    assert as_compliance.post("/api/admin/history/", {}, format="json").status_code == 405
    row = LogEntry.objects.create(user=personas.admin, action_flag=CHANGE, object_repr="x", change_message="[]")
    assert as_compliance.delete(f"/api/admin/history/{row.pk}/").status_code == 405
    assert not LogEntry.objects.exclude(pk=row.pk).exists()


def test_staff_outside_both_groups_cannot_read_the_history(staff):
    from gateway_site.auth_tokens import token_issue

    sam = get_user_model().objects.create_user("sam", password="sam-password-1", is_staff=True)
    assert token_client(token_issue(user=sam).plaintext).get("/api/admin/history/").status_code == 403
    assert token_client().get("/api/admin/history/").status_code == 401


def test_an_api_change_shows_in_the_admins_history_page_for_compliance(as_admin, staff, personas):
    as_admin.patch(f"/api/admin/consumers/{personas.bob.pk}/", {"description": "seen in the admin"}, format="json")
    client = Client()
    client.force_login(staff.compliance)
    page = client.get("/admin/admin/logentry/")
    assert page.status_code == 200
    rows = page.content.decode().split('id="result_list"')[1]
    assert "gwen" in rows and "bob-batch" in rows and "Description" in rows
