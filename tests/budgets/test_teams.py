"""Teams (consumers sharing budgets) and route-scoped budgets, in-process (docs/budgets.md#teams).

Each admission test runs twice: on the Redis counters (when REDIS_URL is set) and on the
database counters that serve without Redis (budgets.fallback).
"""
from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from budgets.admission import budget_reserve
from budgets.holds import LimitExceeded
from budgets.keys import key_digest, key_issue
from budgets.models import ApiKey, Budget, BudgetReservation, Consumer, Team
from budgets.selectors import budget_usage_report, key_info_by_digest, limits_for_key
from proxy.models import Deployment, ModelRoute
from proxy.sandbox import expected_usage
from tests.budgets.conftest import requires_redis
from tests.budgets.test_admission import reserve_for
from tests.proxy.client import chat

pytestmark = pytest.mark.django_db

HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 50}
USED = expected_usage("openai", HELLO).prompt_tokens + expected_usage("openai", HELLO).completion_tokens


@pytest.fixture(params=["redis", "database"])
def counters(request, settings):
    """Both admission paths: the Redis scripts, and the database counters used without Redis."""
    if request.param == "redis":
        if not settings.REDIS_URL:
            pytest.skip("needs REDIS_URL")
    else:
        settings.REDIS_URL = ""
    return request.param


@pytest.fixture
def team(personas) -> Team:
    """alice-agent and bob-batch, in team research."""
    research = Team.objects.create(name="research")
    for consumer in (personas.alice, personas.bob):
        consumer.team = research
        consumer.save()
    return research


@pytest.fixture
def opus_route(demo_route) -> ModelRoute:
    route = ModelRoute.objects.create(model="opus")
    Deployment.objects.create(route=route, provider=demo_route.deployments.get().provider,
                              upstream_model="sandbox-model")
    return route


def rows(**owner) -> dict[tuple[str, tuple[str, ...]], dict]:
    return {(row.owner, row.routes): row.__dict__ for row in budget_usage_report(**owner)}


# --- The model's rules ----------------------------------------------------------------------


@pytest.mark.parametrize("owners", ["", "team consumer", "team key", "consumer key", "team consumer key"])
def test_a_budget_has_exactly_one_owner(personas, owners):
    research = Team.objects.create(name="research")
    given = {"team": research, "consumer": personas.alice, "key": ApiKey.objects.filter(consumer=personas.alice)[0]}
    budget = Budget(metric="tokens", limit=10, **{name: given[name] for name in owners.split()})
    with pytest.raises(ValidationError, match="exactly one owner: a team, a consumer or a key"):
        budget.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        budget.save()


def test_a_team_budget_is_valid_and_its_routes_are_normalised(personas):
    budget = Budget(team=Team.objects.create(name="research"), metric="cost_usd", limit=50_000_000,
                    routes=["opus ", "haiku", "opus"])
    budget.full_clean()
    assert budget.routes == ["haiku", "opus"]
    assert str(budget) == "team research: $50 cost_usd per day on haiku, opus (hard)"


@pytest.mark.parametrize("routes", ["opus", [""], [1], {"opus": 1}])
def test_routes_must_be_a_list_of_route_names(personas, routes):
    with pytest.raises(ValidationError, match="list of route names"):
        Budget(consumer=personas.alice, metric="tokens", limit=1, routes=routes).full_clean()


def test_deleting_a_team_keeps_its_consumers_and_drops_its_budgets(personas, team):
    Budget.objects.create(team=team, metric="tokens", limit=10)
    team.delete()
    personas.alice.refresh_from_db()
    assert personas.alice.team is None
    assert not Budget.objects.exists()


# --- Team budgets on the request path -------------------------------------------------------


def test_two_consumers_of_a_team_share_its_budget(personas, team, demo_route, counters):
    Budget.objects.create(team=team, metric="tokens", limit=reserve_for(HELLO) + USED)  # room for two
    assert chat(personas.alice_key, HELLO).status_code == 200
    assert chat(personas.bob_key, HELLO).status_code == 200
    refused = chat(personas.alice_key, HELLO)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "budget_exceeded"
    assert "this team's tokens budget" in error["message"]
    shared = rows(team=team)[("team research", ())]
    assert (shared["used"], shared["reserved"]) == (2 * USED, 0)
    # Every consumer outside the team is unaffected.
    outsider = key_issue(consumer=Consumer.objects.create(name="carol"), name="c").plaintext
    assert chat(outsider, HELLO).status_code == 200


def test_key_consumer_and_team_budgets_are_held_all_or_none(personas, team, demo_route, counters):
    key = ApiKey.objects.get(consumer=personas.alice, name="laptop")
    Budget.objects.create(key=key, metric="tokens", limit=100_000)
    Budget.objects.create(consumer=personas.alice, metric="tokens", limit=100_000)
    Budget.objects.create(team=team, metric="tokens", limit=1000)
    info = key_info_by_digest(key_digest(personas.alice_key))
    assert info.team_id == team.pk
    limits = async_to_sync(limits_for_key)(info)
    assert [rule.owner for rule in limits.budgets] == ["key", "consumer", "team"]
    admission = async_to_sync(budget_reserve)(key=info, limits=limits, request_id="r1", tokens=600, cost=0)
    assert admission.team_id == team.pk and admission.slot == f"t{team.pk}"
    assert [hold.total for hold in admission.holds] == [600, 600, 600]
    with pytest.raises(LimitExceeded, match="this team's tokens budget") as refused:
        async_to_sync(budget_reserve)(key=info, limits=limits, request_id="r2", tokens=600, cost=0)
    assert refused.value.admission.refused
    # The refused request holds nothing, not even in the budgets that had room.
    reserved = {row["owner"]: row["reserved"] for row in rows(consumer=personas.alice).values()}
    assert reserved == {"key " + key.prefix: 600, "consumer": 600, "team research": 600}
    assert BudgetReservation.objects.filter(request_id="r2").count() == 0


def test_joining_a_team_applies_its_budgets_at_the_next_request(personas, demo_route,
                                                                django_capture_on_commit_callbacks):
    research = Team.objects.create(name="research")
    Budget.objects.create(team=research, metric="requests", limit=1)
    assert chat(personas.alice_key, HELLO).status_code == 200  # caches alice's key: in no team
    with django_capture_on_commit_callbacks(execute=True):
        personas.alice.team = research
        personas.alice.save()
    assert chat(personas.alice_key, HELLO).status_code == 200
    refused = chat(personas.alice_key, HELLO)
    assert refused.status_code == 429 and "this team's requests budget" in refused.json()["error"]["message"]
    with django_capture_on_commit_callbacks(execute=True):
        personas.alice.team = None
        personas.alice.save()
    assert chat(personas.alice_key, HELLO).status_code == 200


def test_changing_a_team_budget_applies_at_the_next_request(personas, team, demo_route,
                                                            django_capture_on_commit_callbacks):
    budget = Budget.objects.create(team=team, metric="requests", limit=1)
    assert chat(personas.alice_key, HELLO).status_code == 200
    assert chat(personas.bob_key, HELLO).status_code == 429
    with django_capture_on_commit_callbacks(execute=True):
        budget.limit = 3
        budget.save()
    assert chat(personas.bob_key, HELLO).status_code == 200


def test_an_inactive_teams_keys_are_refused(personas, team, demo_route, django_capture_on_commit_callbacks):
    assert chat(personas.bob_key, HELLO).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        team.active = False
        team.save()
    assert chat(personas.bob_key, HELLO).status_code == 401
    assert chat(personas.alice_key, HELLO).status_code == 401


# --- Route-scoped budgets -------------------------------------------------------------------


def test_a_route_budget_holds_only_requests_on_its_routes(personas, opus_route, counters):
    Budget.objects.create(consumer=personas.alice, metric="tokens", limit=reserve_for(HELLO), routes=["opus"])
    opus = {**HELLO, "model": "opus"}
    assert chat(personas.alice_key, opus).status_code == 200
    refused = chat(personas.alice_key, opus)
    assert refused.status_code == 429
    message = refused.json()["error"]["message"]
    assert "this consumer's tokens budget" in message and "for route opus" in message
    # Another route is neither held nor charged by it ("$50/day of opus, the rest unlimited").
    for _ in range(3):
        assert chat(personas.alice_key, HELLO).status_code == 200
    row = rows(consumer=personas.alice)[("consumer", ("opus",))]
    assert (row["used"], row["reserved"]) == (USED, 0)


def test_a_team_route_budget_and_an_every_route_budget_apply_together(personas, team, opus_route, counters):
    Budget.objects.create(team=team, metric="requests", limit=1, routes=["opus"])
    Budget.objects.create(consumer=personas.bob, metric="requests", limit=3)
    opus = {**HELLO, "model": "opus"}
    assert chat(personas.alice_key, opus).status_code == 200
    refused = chat(personas.bob_key, opus)
    assert refused.status_code == 429 and "this team's requests budget" in refused.json()["error"]["message"]
    assert chat(personas.bob_key, HELLO).status_code == 200
    assert chat(personas.bob_key, HELLO).status_code == 200
    assert chat(personas.bob_key, HELLO).status_code == 200
    refused = chat(personas.bob_key, HELLO)
    assert refused.status_code == 429 and "this consumer's requests budget" in refused.json()["error"]["message"]


def test_route_limits_come_from_the_cached_entry_without_a_database_read(personas, opus_route,
                                                                         django_assert_num_queries):
    Budget.objects.create(consumer=personas.alice, metric="tokens", limit=1000, routes=["opus"])
    Budget.objects.create(consumer=personas.alice, metric="requests", limit=1000)
    info = key_info_by_digest(key_digest(personas.alice_key))
    assert len(async_to_sync(limits_for_key)(info).budgets) == 2
    with django_assert_num_queries(0):
        on_opus = async_to_sync(limits_for_key)(info, route="opus")
        on_demo = async_to_sync(limits_for_key)(info, route="demo")
    assert [b.metric for b in on_opus.budgets] == ["tokens", "requests"]
    assert [b.metric for b in on_demo.budgets] == ["requests"]


# --- Alerts and metrics name the team -------------------------------------------------------


def test_a_team_budget_alert_names_the_team_and_its_routes(personas, team, settings, monkeypatch):
    from django.core import mail

    from budgets.alerts import budget_alert_send
    from budgets.models import BudgetUsage
    from budgets.periods import window_at

    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    budget = Budget.objects.create(team=team, metric="tokens", limit=1000, mode="soft", alert_at_percent=50,
                                   alert_email="finance@example.com", routes=["opus"])
    window = window_at("day", "UTC", budget.created_at)
    BudgetUsage.objects.create(budget=budget, period_start=window.period_start, starts_at=window.starts_at,
                               ends_at=window.ends_at, used=600)
    assert budget_alert_send(budget_id=budget.pk, period_start=window.period_start, now=budget.created_at)
    assert mail.outbox[0].subject == "Tollgate budget alert: team research used 60% of its tokens budget"
    assert "for routes opus" in mail.outbox[0].body


def test_metrics_report_a_team_budget_once_under_the_team(personas, team):
    from django.test import Client

    Budget.objects.create(team=team, metric="tokens", limit=1000)
    Budget.objects.create(consumer=personas.alice, metric="requests", limit=10)
    body = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    limits = [line for line in body.splitlines() if line.startswith("tollgate_budget_limit{")]
    assert len(limits) == 2, limits
    assert any('consumer="research"' in line and 'scope="team"' in line and line.endswith(" 1000.0")
               for line in limits), limits
    assert any('consumer="alice-agent"' in line and 'scope="consumer"' in line for line in limits), limits


@requires_redis
def test_a_team_members_request_is_one_script_to_reserve_and_one_to_settle(personas, team, opus_route, monkeypatch,
                                                                            django_assert_num_queries):
    """Team and route budgets add no round trip: the team's hold rides in the same script, and a
    cached key's admission reads nothing from the database."""
    from budgets import counters as redis_counters
    from proxy.admission import admit, price_usage, settle_start
    from proxy.context import RequestContext
    from proxy.errors import Caller
    from proxy.routing import route_table

    Budget.objects.create(consumer=personas.alice, metric="tokens", limit=10**9)
    Budget.objects.create(consumer=personas.alice, metric="requests", limit=10**9, routes=["demo"])
    Budget.objects.create(team=team, metric="tokens", limit=10**9)
    scripts: list[int] = []
    run = redis_counters.run

    async def counted(script, keys, args):
        scripts.append(len(keys) // 2 if script is not redis_counters.SEED else 0)
        return await run(script, keys, args)

    monkeypatch.setattr(redis_counters, "run", counted)
    info = key_info_by_digest(key_digest(personas.alice_key))

    async def reserve() -> RequestContext:
        ctx = RequestContext(caller=Caller.OPENAI, endpoint="chat.completions")
        ctx.key, ctx.route = info, (await route_table())["opus"]
        await admit(ctx, {**HELLO, "model": "opus"})
        return ctx

    async def settle(ctx: RequestContext) -> None:
        ctx.deployment, ctx.attempts, ctx.prompt_tokens, ctx.completion_tokens = ctx.route.deployments[0], 1, 10, 5
        await price_usage(ctx)
        await settle_start(ctx)

    async_to_sync(settle)(async_to_sync(reserve)())  # loads the caches, seeds the windows
    scripts.clear()
    with django_assert_num_queries(0):
        ctx = async_to_sync(reserve)()
    assert [h.rule.owner for h in ctx.admission.holds] == ["consumer", "team"]  # not the demo-only budget
    async_to_sync(settle)(ctx)  # (and the database copy: in tests with each request, else every 0.5 s)
    assert scripts == [2, 2]  # RESERVE then SETTLE, each with both budgets' keys
