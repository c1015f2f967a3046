"""Weighted choice, priorities, pinning, failover causes, retry limits, cooldowns and the breaker."""
from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import timedelta
from types import SimpleNamespace

import orjson
import pytest
import time_machine
from asgiref.sync import async_to_sync
from django.utils import timezone

from gateway_site.lib.sharedcache import cache
from proxy import breaker
from proxy.models import Deployment, ModelRoute, Provider
from proxy.routing import DeploymentInfo, ProviderInfo, RouteInfo, deployment_order, route_cache
from tests.proxy.client import _call as call_async
from tests.proxy.client import call, chat
from tests.servers import free_port

HELLO = {"model": "smart", "messages": [{"role": "user", "content": "Say hello"}]}


def _provider(name: str) -> ProviderInfo:
    return ProviderInfo(id=hash(name) % 1000, name=name, kind="openai", base_url="http://x", credential="",
                        extra_headers=(), timeout_seconds=1, connect_timeout_seconds=1)


def _route(*deployments: tuple[str, int, int]) -> RouteInfo:
    infos = tuple(DeploymentInfo(id=i, provider=_provider(name), upstream_model="m", weight=weight,
                                 priority=priority) for i, (name, weight, priority) in enumerate(deployments))
    return RouteInfo(id=1, model="smart", deployments=infos, created=0, default_max_tokens=10)


def test_weighted_choice_over_2000_picks_is_within_statistical_tolerance():
    route = _route(("anthropic", 10, 0), ("openai", 5, 0), ("gemini", 1, 0))
    rng = random.Random(20261126)
    picks = [deployment_order(route, rng=rng)[0].provider.name for _ in range(2000)]
    for name, weight in (("anthropic", 10), ("openai", 5), ("gemini", 1)):
        share = weight / 16
        tolerance = 4 * (share * (1 - share) / 2000) ** 0.5  # four standard deviations
        assert abs(picks.count(name) / 2000 - share) < tolerance, name


def test_lower_priorities_come_only_after_every_higher_one():
    route = _route(("a", 1, 0), ("b", 1, 0), ("c", 100, 1))
    for seed in range(50):
        order = [d.provider.name for d in deployment_order(route, rng=random.Random(seed))]
        assert set(order[:2]) == {"a", "b"} and order[2] == "c"


def test_a_zero_weight_deployment_is_never_chosen():
    route = _route(("a", 0, 0), ("b", 1, 0))
    assert [d.provider.name for d in deployment_order(route)] == ["b"]


@pytest.fixture
def smart(db, sandbox_url, settings, monkeypatch) -> SimpleNamespace:
    """Route `smart`: Anthropic first (priority 0), OpenAI second (priority 1), both on the sandbox."""
    settings.TOLLGATE_BREAKER_RECHECK_SECONDS = 0
    monkeypatch.setenv("TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY", "sk-upstream")
    primary = Provider.objects.create(name="claude", kind="anthropic", base_url=sandbox_url,
                                      api_key_env="TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY")
    secondary = Provider.objects.create(name="gpt", kind="openai", base_url=f"{sandbox_url}/v1",
                                        api_key_env="TOLLGATE_PROVIDER_TG_TEST_UPSTREAM_KEY")
    route = ModelRoute.objects.create(model="smart")
    first = Deployment.objects.create(route=route, provider=primary, upstream_model="claude-x", weight=10, priority=0)
    second = Deployment.objects.create(route=route, provider=secondary, upstream_model="gpt-x", weight=5, priority=1)
    return SimpleNamespace(route=route, primary=primary, secondary=secondary, first=first, second=second)


def _update(obj, **fields) -> None:
    for name, value in fields.items():
        setattr(obj, name, value)
    obj.save()
    route_cache.clear_local()  # tests do not commit, so on_commit invalidation does not run


@pytest.fixture
def alice(personas) -> str:
    return personas.alice_key


@pytest.mark.parametrize("status", [429, 500, 502, 503, 529])
def test_it_fails_over_on_a_retryable_status(alice, smart, status):
    _update(smart.primary, extra_headers={"x-sandbox-fail-status": str(status)})
    response = chat(alice, HELLO)
    assert response.status_code == 200, response.content
    assert response.headers["x-tollgate-provider"] == "gpt"
    assert response.headers["x-tollgate-attempts"] == "2"


def test_it_fails_over_on_529_for_an_anthropic_caller_too(alice, smart):
    _update(smart.primary, extra_headers={"x-sandbox-fail-status": "529"})
    response = call("POST", "/v1/messages", key=alice, body={**HELLO, "max_tokens": 50},
                    headers={"anthropic-version": "2023-06-01"})
    assert response.status_code == 200
    assert response.json()["content"][0]["text"] == "Sandbox reply to: Say hello"
    assert response.headers["x-tollgate-provider"] == "gpt"


def test_it_fails_over_on_a_timeout(alice, smart):
    _update(smart.primary, timeout_seconds=0.3, extra_headers={"x-sandbox-hang-ms": "3000"})
    response = chat(alice, HELLO)
    assert response.status_code == 200
    assert response.headers["x-tollgate-provider"] == "gpt"


def test_it_fails_over_when_the_provider_is_down(alice, smart):
    _update(smart.primary, base_url=f"http://127.0.0.1:{free_port()}")
    response = chat(alice, {**HELLO, "stream": True})
    assert response.status_code == 200
    assert response.sse_events()[-1] == b"data: [DONE]"
    assert response.headers["x-tollgate-provider"] == "gpt"


def test_it_fails_over_when_a_stream_breaks_before_the_first_byte(alice, smart):
    _update(smart.primary, extra_headers={"x-sandbox-disconnect-after": "0"})
    response = chat(alice, {**HELLO, "stream": True})
    assert response.headers["x-tollgate-provider"] == "gpt"
    assert response.sse_events()[-1] == b"data: [DONE]"


def test_it_does_not_fail_over_on_a_bad_request(alice, smart):
    _update(smart.primary, extra_headers={"x-sandbox-fail-status": "400"})
    response = chat(alice, HELLO)
    assert response.status_code == 400
    assert response.json()["error"]["message"]
    assert response.headers["x-tollgate-attempts"] == "1"


def test_max_retries_zero_means_one_attempt(alice, smart):
    _update(smart.route, max_retries=0)
    _update(smart.primary, extra_headers={"x-sandbox-fail-status": "503"})
    response = chat(alice, HELLO)
    assert response.status_code == 503
    assert response.headers["x-tollgate-attempts"] == "1"
    assert response.headers["retry-after"] == "1"


def test_failover_statuses_are_chosen_per_route(alice, smart):
    _update(smart.route, failover_statuses=[500])
    _update(smart.primary, extra_headers={"x-sandbox-fail-status": "503"})
    assert chat(alice, HELLO).status_code == 503
    _update(smart.primary, extra_headers={"x-sandbox-fail-status": "500"})
    assert chat(alice, HELLO).headers["x-tollgate-provider"] == "gpt"


def test_no_new_attempt_starts_after_the_retry_budget(alice, smart):
    _update(smart.route, retry_budget_seconds=0)
    _update(smart.primary, extra_headers={"x-sandbox-fail-status": "500"})
    response = chat(alice, HELLO)
    assert response.status_code == 500
    assert response.headers["x-tollgate-attempts"] == "1"


def test_retry_after_puts_the_deployment_in_cooldown(alice, smart):
    _update(smart.primary, extra_headers={"x-sandbox-fail-status": "429"})  # the sandbox sends retry-after: 1
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        assert chat(alice, HELLO).headers["x-tollgate-attempts"] == "2"
        assert breaker.state_now(smart.first.pk) == "open"
        cooled = chat(alice, HELLO)
        assert cooled.headers["x-tollgate-provider"] == "gpt"
        assert cooled.headers["x-tollgate-attempts"] == "1", "the cooling deployment is skipped"
        _update(smart.primary, extra_headers={})
        traveller.shift(timedelta(seconds=2))
        assert breaker.state_now(smart.first.pk) == "half_open"
        trial = chat(alice, HELLO)
        assert trial.headers["x-tollgate-provider"] == "claude"
        assert breaker.state_now(smart.first.pk) == "closed"


def test_the_breaker_opens_after_repeated_failures_and_a_trial_closes_it(alice, smart, settings):
    settings.TOLLGATE_BREAKER_FAILURES = 3
    settings.TOLLGATE_BREAKER_COOLDOWN_SECONDS = 30
    _update(smart.primary, extra_headers={"x-sandbox-fail-status": "500"})
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        for _ in range(3):
            assert chat(alice, HELLO).headers["x-tollgate-attempts"] == "2"
        assert breaker.state_now(smart.first.pk) == "open"
        assert chat(alice, HELLO).headers["x-tollgate-attempts"] == "1"
        traveller.shift(timedelta(seconds=31))
        # Half-open: one trial, which fails and opens it again.
        assert chat(alice, HELLO).headers["x-tollgate-attempts"] == "2"
        assert breaker.state_now(smart.first.pk) == "open"
        assert Deployment.objects.get(pk=smart.first.pk).last_error


def test_every_deployment_held_by_retry_after_is_a_503_with_retry_after(alice, smart):
    async def hold_both() -> None:
        for deployment in (smart.first, smart.second):
            await breaker.record_failure(deployment.pk, "429", retry_after=30)

    async_to_sync(hold_both)()
    response = chat(alice, HELLO)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_healthy_deployment"
    assert 25 <= int(response.headers["retry-after"]) <= 30


def test_when_every_deployment_is_out_the_first_one_out_is_tried_at_once(alice, smart):
    """A blip that opened every breaker does not refuse the route for a whole cooldown."""
    with time_machine.travel(timezone.now(), tick=False) as traveller:
        breaker.trip(smart.second.pk, "down")
        traveller.shift(timedelta(seconds=1))
        breaker.trip(smart.first.pk, "down")
        response = chat(alice, HELLO)
        assert response.status_code == 200
        assert response.headers["x-tollgate-provider"] == "gpt", "the one that went out first"
        assert breaker.state_now(smart.second.pk) == "closed"
        assert breaker.state_now(smart.first.pk) == "open"


def test_early_trials_go_one_at_a_time_and_each_failed_one_waits(alice, smart, monkeypatch):
    monkeypatch.setattr(breaker, "EARLY_TRIAL_SPACING_SECONDS", 20)  # no second may pass by chance
    for provider in (smart.primary, smart.secondary):
        _update(provider, extra_headers={"x-sandbox-fail-status": "500"})
    breaker.trip(smart.first.pk, "down")
    breaker.trip(smart.second.pk, "down")
    answers = [chat(alice, HELLO) for _ in range(3)]
    # The first one out is tried and fails; then the other one; then neither, until a spacing has passed.
    assert [a.status_code for a in answers] == [500, 500, 503]
    assert [a.headers.get("x-tollgate-provider") for a in answers[:2]] == ["claude", "gpt"]
    assert answers[2].json()["error"]["code"] == "no_healthy_deployment"
    assert 1 <= int(answers[2].headers["retry-after"]) <= 20


def test_a_client_that_leaves_counts_against_no_breaker_and_gives_its_trial_back(alice, smart, settings):
    settings.TOLLGATE_BREAKER_FAILURES = 2
    _update(smart.primary, extra_headers={"x-sandbox-hang-ms": "5000"})
    _update(smart.secondary, extra_headers={"x-sandbox-hang-ms": "5000"})

    async def leave_after(seconds: float) -> None:
        task = asyncio.ensure_future(call_async("POST", "/v1/chat/completions", key=alice, body=HELLO, raw=None,
                                                headers={}))
        await asyncio.sleep(seconds)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    for _ in range(3):
        async_to_sync(leave_after)(0.5)
    assert breaker.state_now(smart.first.pk) == "closed"
    assert cache.get(f"breaker:{smart.first.pk}:fails") is None
    # A trial whose client left is given back: the next request may try at once.
    breaker.trip(smart.first.pk, "down")
    breaker.trip(smart.second.pk, "down")
    async_to_sync(leave_after)(0.5)
    assert cache.get(f"breaker:{smart.first.pk}:trial") is None
    assert cache.get(f"breaker:{smart.second.pk}:trial") is None


def test_x_provider_pins_a_provider(alice, smart):
    response = chat(alice, HELLO, headers={"X-Provider": "gpt"})
    assert response.headers["x-tollgate-provider"] == "gpt"
    assert response.headers["x-tollgate-attempts"] == "1"


def test_pinning_a_provider_the_route_does_not_have_is_a_400(alice, smart):
    response = chat(alice, HELLO, headers={"X-Provider": "nope"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "provider_not_in_route"
    assert "nope" in response.json()["error"]["message"]


def test_a_pinned_failing_provider_fails_without_fallback_and_falls_back_when_allowed(alice, smart):
    _update(smart.secondary, extra_headers={"x-sandbox-fail-status": "503"})
    assert chat(alice, HELLO, headers={"X-Provider": "gpt"}).status_code == 503
    _update(smart.route, allow_pin_fallback=True)
    response = chat(alice, HELLO, headers={"X-Provider": "gpt"})
    assert response.status_code == 200
    assert response.headers["x-tollgate-provider"] == "claude"
    assert chat(alice, HELLO, headers={"X-Provider": "nope"}).status_code == 200


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_stream_cut_after_the_first_byte_ends_with_an_error_event_and_no_retry(alice, smart, kind):
    provider = smart.primary if kind == "anthropic" else smart.secondary
    _update(provider, extra_headers={"x-sandbox-disconnect-after": "3"})
    response = chat(alice, {**HELLO, "stream": True}, headers={"X-Provider": provider.name})
    assert response.status_code == 200
    events = response.sse_events()
    assert events[-1] != b"data: [DONE]"
    error = orjson.loads(events[-1][len(b"data: "):])["error"]
    assert error["code"] == "stream_interrupted"
    assert response.headers["x-tollgate-attempts"] == "1"


def test_an_anthropic_caller_gets_an_error_event_when_the_stream_breaks(alice, smart):
    _update(smart.secondary, extra_headers={"x-sandbox-disconnect-after": "3"})
    response = call("POST", "/v1/messages", key=alice, body={**HELLO, "max_tokens": 50, "stream": True},
                    headers={"anthropic-version": "2023-06-01", "X-Provider": "gpt"})
    last = response.sse_events()[-1]
    assert last.startswith(b"event: error\n")
    assert orjson.loads(last.split(b"data: ", 1)[1])["error"]["type"] == "api_error"


def test_the_health_check_trips_a_down_provider_and_lets_a_recovered_one_try(smart):
    from proxy.services import provider_health_check_all

    good_url = smart.primary.base_url
    _update(smart.primary, base_url=f"http://127.0.0.1:{free_port()}")
    assert provider_health_check_all() == 2
    smart.primary.refresh_from_db()
    assert smart.primary.last_check_ok is False and "ConnectError" in smart.primary.last_check_error
    assert breaker.state_now(smart.first.pk) == "open"
    assert breaker.state_now(smart.second.pk) == "closed"
    assert provider_health_check_all() == 0, "not due again before its interval"
    _update(smart.primary, base_url=good_url)
    Provider.objects.update(last_check_at=timezone.now() - timedelta(minutes=5))
    assert provider_health_check_all() == 2
    smart.primary.refresh_from_db()
    assert smart.primary.last_check_ok is True
    assert breaker.state_now(smart.first.pk) == "half_open"


def test_the_health_check_is_scheduled_on_celery_beat(settings):
    entry = settings.CELERY_BEAT_SCHEDULE["proxy-health-check"]
    assert entry["task"] == "proxy.tasks.provider_health_check"
    from gateway_site.celery import app
    app.loader.import_default_modules()
    assert "proxy.tasks.provider_health_check" in app.tasks


def test_the_admin_shows_each_deployments_state_last_error_and_last_check(client, personas, smart):
    breaker.trip(smart.first.pk, "provider answered 503")
    client.force_login(personas.admin)
    page = client.get("/admin/proxy/deployment/").content.decode()
    assert "open (" in page and "provider answered 503" in page and "never" in page
    assert client.get(f"/admin/proxy/modelroute/{smart.route.pk}/change/").status_code == 200
