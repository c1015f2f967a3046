"""Teams and route budgets in `manage.py usage` and in the configuration file (gateway_apply / gateway_export)."""
from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command

from budgets.models import Budget, Consumer, Team
from tests.budgets.test_configfile import apply, export
from tests.proxy.client import chat

pytestmark = pytest.mark.django_db

TEAMS_YAML = """\
teams:
  - name: research
    budgets:
      - {metric: cost_usd, limit: 500, period: month}
      - {metric: tokens, limit: 100000, period: day, routes: [opus, haiku]}
consumers:
  - name: alice
    team: research
    budgets:
      - {metric: cost_usd, limit: 50, period: day, routes: [opus]}
      - {metric: cost_usd, limit: 80, period: day}
  - name: bob
    team: research
"""


def test_teams_and_route_budgets_apply_and_round_trip_through_export(tmp_path):
    out = apply(tmp_path, TEAMS_YAML)
    assert "+ team research" in out and "+ team of alice: research" in out
    team = Team.objects.get(name="research")
    assert set(team.consumers.values_list("name", flat=True)) == {"alice", "bob"}
    assert {(b.metric, b.limit, tuple(b.routes)) for b in team.budgets.all()} == {
        ("cost_usd", 500_000_000, ()), ("tokens", 100_000, ("haiku", "opus"))}
    alice = Consumer.objects.get(name="alice")
    assert {(b.limit, tuple(b.routes)) for b in alice.budgets.all()} == {(50_000_000, ("opus",)), (80_000_000, ())}
    text = export()
    assert "teams:\n  - name: research\n    budgets:\n" in text
    assert "- {metric: tokens, limit: 100000, period: day, routes: [haiku, opus]}" in text
    assert "  - name: alice\n    team: research\n" in text
    assert "- {metric: cost_usd, limit: 50, period: day, routes: [opus]}" in text
    assert apply(tmp_path, text).strip() == "No changes."
    assert apply(tmp_path, TEAMS_YAML).strip() == "No changes."


def test_leaving_a_team_and_changing_a_route_budget_in_the_file(tmp_path):
    apply(tmp_path, TEAMS_YAML)
    before = Budget.objects.get(consumer__name="alice", routes=["opus"])
    changed = TEAMS_YAML.replace("  - name: bob\n    team: research\n", "  - name: bob\n").replace(
        "{metric: cost_usd, limit: 50, period: day, routes: [opus]}",
        "{metric: cost_usd, limit: 60, period: day, routes: [opus]}")
    out = apply(tmp_path, changed)
    assert "~ team of bob: research → none" in out
    assert "~ budget alice cost_usd/day on opus: limit 50 → 60" in out
    assert Consumer.objects.get(name="bob").team is None
    after = Budget.objects.get(consumer__name="alice", routes=["opus"])
    assert (after.pk, after.limit) == (before.pk, 60_000_000)  # same row: its usage is kept


def test_pruning_a_team_keeps_its_consumers(tmp_path):
    apply(tmp_path, TEAMS_YAML)
    out = apply(tmp_path, "teams: []\nconsumers:\n  - name: alice\n  - name: bob\n", "--prune")
    assert "- team research (and its budgets; its consumers stay, in no team)" in out
    assert not Team.objects.exists() and Consumer.objects.filter(team=None).count() == 2


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("    team: research\n    budgets", "    team: nope\n    budgets", "names unknown team 'nope'"),
    ("    team: research\n    budgets", "    team: [research]\n    budgets", "team must be a team's name"),
    ("routes: [opus]}", "routes: opus}", "routes must be a list"),
    ("routes: [opus]}", "routes: ['']}", "routes must be a list of route names"),
    ("{metric: cost_usd, limit: 80, period: day}", "{metric: cost_usd, limit: 80, period: day, routes: [opus]}",
     "duplicate budget cost_usd/day on opus"),
])
def test_bad_teams_and_routes_are_refused_with_their_line(tmp_path, old, new, expected):
    assert old in TEAMS_YAML
    with pytest.raises(CommandError, match=expected) as info:
        apply(tmp_path, TEAMS_YAML.replace(old, new, 1))
    assert "gateway.yaml:" in str(info.value)
    assert not Team.objects.exists() and not Budget.objects.exists()


def test_the_usage_command_shows_team_and_route_budgets(personas, demo_route, capsys):
    team = Team.objects.create(name="research")
    personas.alice.team = team
    personas.alice.save()
    Budget.objects.create(team=team, metric="requests", limit=10)
    Budget.objects.create(consumer=personas.alice, metric="tokens", limit=1000, routes=["opus"])
    assert chat(personas.alice_key, {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).status_code \
        == 200
    call_command("usage", "alice-agent")
    out = capsys.readouterr().out
    assert "alice-agent is in team research" in out
    header = out.splitlines()[1]
    assert header.split()[:5] == ["owner", "metric", "mode", "period", "routes"]
    team_line = next(line for line in out.splitlines() if line.startswith("team research"))
    assert "requests" in team_line and " all " in team_line and " 10 " in team_line and " 1 " in team_line
    route_line = next(line for line in out.splitlines() if line.startswith("consumer") and "opus" in line)
    assert "tokens" in route_line and "1,000" in route_line
    call_command("usage", "--team", "research")
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("team research") and len(out.splitlines()) == 2
    with pytest.raises(CommandError, match="No team named 'nope'"):
        call_command("usage", "--team", "nope")
    with pytest.raises(CommandError, match="Name a consumer, or a team"):
        call_command("usage")
