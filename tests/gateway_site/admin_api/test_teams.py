"""Teams and route-scoped budgets through the admin API (docs/admin.md)."""
from __future__ import annotations

import pytest

from budgets.models import Budget, Team
from tests.proxy.client import chat

pytestmark = pytest.mark.django_db
HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


def test_a_team_is_created_joined_given_a_budget_and_reported(as_admin, personas, demo_route,
                                                              django_capture_on_commit_callbacks):
    created = as_admin.post("/api/admin/teams/", {"name": "research"}, format="json")
    assert created.status_code == 201, created.content
    team_id = created.json()["id"]
    with django_capture_on_commit_callbacks(execute=True):
        for consumer in (personas.alice, personas.bob):
            joined = as_admin.patch(f"/api/admin/consumers/{consumer.pk}/", {"team": team_id}, format="json")
            assert joined.status_code == 200 and joined.json()["team"] == team_id
    team = as_admin.get(f"/api/admin/teams/{team_id}/").json()
    assert (team["name"], team["active"], sorted(team["members"])) == ("research", True,
                                                                       sorted([personas.alice.pk, personas.bob.pk]))
    members = as_admin.get("/api/admin/consumers/", {"team": team_id}).json()["results"]
    assert {m["name"] for m in members} == {"alice-agent", "bob-batch"}

    budget = as_admin.post("/api/admin/budgets/", {"team": team_id, "metric": "requests", "limit": 1,
                                                   "routes": ["demo", " demo"]}, format="json")
    assert budget.status_code == 201, budget.content
    assert (budget.json()["team"], budget.json()["consumer"], budget.json()["routes"]) == (team_id, None, ["demo"])
    listed = as_admin.get("/api/admin/budgets/", {"team": team_id}).json()["results"]
    assert [b["id"] for b in listed] == [budget.json()["id"]]

    assert chat(personas.alice_key, HELLO).status_code == 200
    refused = chat(personas.bob_key, HELLO)
    assert refused.status_code == 429 and "this team's requests budget" in refused.json()["error"]["message"]
    usage = as_admin.get(f"/api/admin/teams/{team_id}/usage/").json()
    assert [(u["owner"], u["routes"], u["used"], u["limit"]) for u in usage] == [("team research", ["demo"], 1, 1)]
    # A member's usage includes its team's budgets: they hold its requests too.
    bob_usage = as_admin.get(f"/api/admin/consumers/{personas.bob.pk}/usage/").json()
    assert [u["owner"] for u in bob_usage] == ["team research"]


def test_deleting_a_team_through_the_api_drops_its_budgets_and_keeps_its_consumers(as_admin, personas):
    team = Team.objects.create(name="research")
    personas.alice.team = team
    personas.alice.save()
    Budget.objects.create(team=team, metric="tokens", limit=10)
    assert as_admin.delete(f"/api/admin/teams/{team.pk}/").status_code == 204
    assert as_admin.get(f"/api/admin/consumers/{personas.alice.pk}/").json()["team"] is None
    assert not Budget.objects.exists()


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "no spaces"}, "name"),
    ({"name": "research", "active": "maybe"}, "active"),
])
def test_bad_teams_are_a_400_naming_the_field(as_admin, body, field):
    Team.objects.create(name="taken")
    response = as_admin.post("/api/admin/teams/", body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["message"] or field in str(response.json())


def test_bad_routes_are_a_400(as_admin, personas):
    response = as_admin.post("/api/admin/budgets/", {"consumer": personas.bob.pk, "metric": "tokens", "limit": 5,
                                                     "routes": "opus"}, format="json")
    assert response.status_code == 400 and "routes" in str(response.json())
    assert not Budget.objects.exists()


def test_an_api_change_to_a_team_shows_in_the_history(as_admin, staff):
    from django.contrib.admin.models import LogEntry

    team_id = as_admin.post("/api/admin/teams/", {"name": "research"}, format="json").json()["id"]
    as_admin.patch(f"/api/admin/teams/{team_id}/", {"active": False}, format="json")
    entries = LogEntry.objects.filter(object_id=str(team_id), content_type__model="team")
    assert entries.count() == 2 and all(e.user == staff.admin for e in entries)
