"""Teams and route-scoped budgets in the admin (docs/admin.md)."""
from __future__ import annotations

import pytest
from django.urls import reverse

from budgets.models import Budget, Team

pytestmark = pytest.mark.django_db


@pytest.fixture
def research(personas) -> Team:
    team = Team.objects.create(name="research")
    personas.alice.team = team
    personas.alice.save()
    Budget.objects.create(team=team, metric="cost_usd", limit=50_000_000, routes=["opus"])
    return team


def test_the_team_page_shows_its_members_budgets_and_usage(admin_client, research):
    page = admin_client.get(reverse("admin:budgets_team_change", args=[research.pk])).content.decode()
    assert "alice-agent" in page and "bob-batch" not in page  # members
    assert 'name="budgets-0-routes"' in page and "opus" in page  # its budgets, routes one per line
    assert "Usage this period" in page and "team research cost_usd" in page and "routes opus" in page
    listing = admin_client.get(reverse("admin:budgets_team_changelist")).content.decode()
    assert "research" in listing


def test_the_consumer_pages_show_the_team_and_its_budgets(admin_client, research, personas):
    listing = admin_client.get(reverse("admin:budgets_consumer_changelist")).content.decode()
    assert "research" in listing
    page = admin_client.get(reverse("admin:budgets_consumer_change", args=[personas.alice.pk])).content.decode()
    assert 'name="team"' in page
    assert "team research cost_usd" in page  # what alice's requests hold, the team's budget included


def _budget_form(**fields) -> dict:
    form = {"team": "", "consumer": "", "key": "", "metric": "tokens", "limit": "1000", "period": "day",
            "timezone": "UTC", "mode": "hard", "routes": "", "alert_at_percent": "", "alert_email": "",
            "alert_webhook": "", "enabled": "on"}
    form.update({name: str(value) for name, value in fields.items()})
    return form


def test_a_team_budget_with_routes_is_added_in_the_admin(admin_client, research):
    response = admin_client.post(reverse("admin:budgets_budget_add"),
                                 _budget_form(team=research.pk, routes="opus\nhaiku, opus"))
    assert response.status_code == 302, response.content.decode()[-2000:]
    added = Budget.objects.get(team=research, metric="tokens")
    assert added.routes == ["haiku", "opus"]
    listing = admin_client.get(reverse("admin:budgets_budget_changelist")).content.decode()
    assert "haiku, opus" in listing and "every route" not in listing.split("haiku, opus")[0][-200:]


def test_the_admin_refuses_a_budget_with_two_owners(admin_client, research, personas):
    response = admin_client.post(reverse("admin:budgets_budget_add"),
                                 _budget_form(team=research.pk, consumer=personas.bob.pk))
    assert response.status_code == 200
    assert "Give exactly one owner: a team, a consumer or a key." in response.content.decode()
    assert not Budget.objects.filter(metric="tokens").exists()
