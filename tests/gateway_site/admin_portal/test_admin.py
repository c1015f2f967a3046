"""The admin as a gateway-admin and as compliance: keys, actions, the admin log, the dashboard."""
from __future__ import annotations

import re

import pytest
from django.contrib import admin
from django.contrib.admin.models import ADDITION, CHANGE, LogEntry
from django.urls import reverse
from django.utils import timezone

from budgets.keys import key_digest
from budgets.models import ApiKey, Budget, BudgetUsage
from budgets.periods import window_at
from tests.proxy.client import chat

pytestmark = pytest.mark.django_db
HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def plaintexts(page: str) -> list[str]:
    return re.findall(r'value="(tg-[A-Za-z0-9_-]+)"', page)


def test_a_key_is_issued_from_the_consumer_page_and_shown_once(admin_client, personas):
    page = admin_client.get(reverse("admin:budgets_consumer_change", args=[personas.bob.pk])).content.decode()
    issue_url = re.search(r'id="issue-key" href="([^"]+)"', page).group(1).replace("&amp;", "&")
    form = admin_client.get(issue_url).content.decode()
    assert f'value="{personas.bob.pk}" selected' in form
    response = admin_client.post(issue_url, {"consumer": personas.bob.pk, "name": "laptop-2",
                                             "allowed_routes": "[]"})
    assert "no-store" in response["Cache-Control"]
    [plaintext] = plaintexts(response.content.decode())
    key = ApiKey.objects.get(name="laptop-2")
    assert key.digest == key_digest(plaintext)
    assert LogEntry.objects.filter(object_id=str(key.pk), action_flag=ADDITION).exists()
    assert plaintext not in admin_client.get(reverse("admin:budgets_apikey_change", args=[key.pk])).content.decode()


def test_rotating_keys_with_the_admin_action(admin_client, personas, demo_route, django_capture_on_commit_callbacks):
    key = ApiKey.objects.get(consumer=personas.bob)
    url = reverse("admin:budgets_apikey_changelist")
    form = admin_client.post(url, {"action": "rotate_keys", "_selected_action": [key.pk]})
    assert b"grace_hours" in form.content
    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post(url, {"action": "rotate_keys", "_selected_action": [key.pk], "grace_hours": "0",
                                       "apply": "Rotate"})
    [new_plaintext] = plaintexts(done.content.decode())
    assert chat(new_plaintext, HELLO).status_code == 200
    assert chat(personas.bob_key, HELLO).status_code == 401  # no grace: expired at once
    assert LogEntry.objects.filter(object_id=str(key.pk), action_flag=CHANGE,
                                   change_message__startswith="Rotated").exists()


def test_setting_the_expiry_with_the_admin_action(admin_client, personas):
    key = ApiKey.objects.get(consumer=personas.bob)
    admin_client.post(reverse("admin:budgets_apikey_changelist"), {
        "action": "set_expiry", "_selected_action": [key.pk], "expires_at": "2031-01-02 03:04", "apply": "1"})
    key.refresh_from_db()
    assert key.expires_at.year == 2031
    assert LogEntry.objects.filter(object_id=str(key.pk), change_message__startswith="Expiry set").exists()


def test_the_key_list_shows_prefix_status_and_last_use(admin_client, personas):
    page = admin_client.get(reverse("admin:budgets_apikey_changelist")).content.decode()
    assert "revoked" in page and "active" in page and ApiKey.objects.first().prefix in page
    revoked = admin_client.get(reverse("admin:budgets_apikey_changelist"), {"status": "revoked"}).content.decode()
    assert revoked.count('class="action-select"') == 1


def test_the_consumer_list_shows_usage_against_budgets_as_bars(admin_client, personas):
    budget = Budget.objects.create(consumer=personas.alice, metric="requests", limit=10)
    window = window_at(budget.period, budget.timezone, timezone.now())
    BudgetUsage.objects.create(budget=budget, period_start=window.period_start, starts_at=window.starts_at,
                               ends_at=window.ends_at, used=9)
    page = admin_client.get(reverse("admin:budgets_consumer_changelist")).content.decode()
    assert 'class="tg-usage-fill" style="width:90%;background:#ef6c00"' in page
    assert "requests/day 9 / 10" in page


def test_the_route_page_shows_its_deployments_health(admin_client, demo_route):
    page = admin_client.get(reverse("admin:proxy_modelroute_change", args=[demo_route.pk])).content.decode()
    assert "closed" in page and "sandbox-model" in page


def test_the_dashboard_draws_charts_from_the_audit_log(admin_client, personas, demo_route):
    for _ in range(2):
        chat(personas.alice_key, HELLO)
    page = admin_client.get(reverse("gateway-dashboard")).content.decode()
    assert page.count('<svg class="tg-chart"') == 6 and 'id="tg-total-requests">2<' in page
    assert "alice-agent" in page
    assert admin_client.get(reverse("gateway-dashboard"), {"consumer": "bob-batch"}).status_code == 200


def test_the_admin_log_is_visible_to_compliance(client, staff, personas):
    client.force_login(staff.admin)
    client.post(reverse("admin:budgets_consumer_add"), {
        "name": "new-team", "active": "on", **{f"{p}-{k}": v for p in ("keys", "budgets", "rate_limits")
                                                 for k, v in (("TOTAL_FORMS", "0"), ("INITIAL_FORMS", "0"))}})
    assert LogEntry.objects.filter(object_repr="new-team", action_flag=ADDITION).exists()
    client.force_login(staff.compliance)
    page = client.get(reverse("admin:admin_logentry_changelist")).content.decode()
    assert "new-team" in page
    entry = LogEntry.objects.get(object_repr="new-team")
    assert client.post(reverse("admin:admin_logentry_change", args=[entry.pk]), {}).status_code == 403
    assert client.post(reverse("admin:admin_logentry_delete", args=[entry.pk]), {"post": "yes"}).status_code == 403


def test_compliance_sees_the_audit_log_dashboard_and_exports(compliance_client):
    assert compliance_client.get(reverse("admin:audit_auditevent_changelist")).status_code == 200
    assert compliance_client.get(reverse("gateway-dashboard")).status_code == 200
    assert compliance_client.get(reverse("admin:audit_auditevent_export")).status_code == 200
    assert b"Usage dashboard" in compliance_client.get(reverse("admin:index")).content


def test_every_change_view_refuses_compliance(compliance_client, personas, demo_route):
    """For every model in the admin: add, change and delete refuse (403), whatever compliance may view."""
    checked = 0
    for model in admin.site._registry:
        opts = model._meta
        name = f"admin:{opts.app_label}_{opts.model_name}"
        assert compliance_client.post(reverse(f"{name}_add"), {}).status_code == 403, name
        obj = model._default_manager.first()
        if obj is not None:
            assert compliance_client.post(reverse(f"{name}_change", args=[obj.pk]), {}).status_code == 403, name
            response = compliance_client.post(reverse(f"{name}_delete", args=[obj.pk]), {"post": "yes"})
            assert response.status_code == 403, name
            assert model._default_manager.filter(pk=obj.pk).exists()
            checked += 1
    assert checked >= 5


def test_staff_outside_the_groups_sees_no_dashboard(client, db):
    from django.contrib.auth import get_user_model

    sam = get_user_model().objects.create_user("sam", password="sam-password-1", is_staff=True)
    client.force_login(sam)
    assert client.get(reverse("gateway-dashboard")).status_code == 403
