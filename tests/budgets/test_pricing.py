"""Prices by token class (issue #16): the cost of each class, which price a model name
takes, the seeded table, and unpriced models."""
from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from asgiref.sync import async_to_sync
from django.apps import apps

from budgets.models import ModelPrice
from budgets.pricing import (
    Price,
    PriceTable,
    TokenUsage,
    model_base_names,
    price_table,
    unpriced_seen,
    unpriced_seen_add,
    unpriced_seen_clear,
)
from proxy.admission import price_usage
from proxy.context import RequestContext
from proxy.errors import Caller
from proxy.routing import DeploymentInfo, ProviderInfo
from tests.budgets.conftest import budget


def usd(text: str) -> int:
    """Dollars per million tokens as written on a pricing page -> micro-dollars per million."""
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def price(input_usd: str = "1", output_usd: str = "2", **classes: int) -> Price:
    row = ModelPrice(model="x", input_per_million=usd(input_usd), output_per_million=usd(output_usd), **classes)
    return Price.from_row(row)


def seeded() -> PriceTable:
    return async_to_sync(price_table)()


CACHED_TURN = TokenUsage(input_tokens=1_000, cache_read_tokens=900, output_tokens=20)


# --- The cost of each token class -------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("model", "expected_micro"), [
    # The request: $0.0033 when cache reads were charged as input, $0.00087 at list price.
    # 100 uncached x $3 + 900 read x $0.30 + 20 out x $15 (per million tokens).
    ("claude-sonnet-4-5-20250929", 100 * 3 + 900 * 0.30 + 20 * 15),
    # Claude Code's default: 100 x $5 + 900 x $0.50 + 20 x $25.
    ("claude-opus-4-8", 100 * 5 + 900 * 0.50 + 20 * 25),
    # Codex CLI's default: 100 x $2 + 900 x $0.10 + 20 x $10.
    ("gpt-6.1-sol", 100 * 2 + 900 * 0.10 + 20 * 10),
    ("gpt-4o-2024-08-06", 100 * 2.50 + 900 * 1.25 + 20 * 10),
    # Gemini CLI's default: 100 x $1.25 + 900 x $0.125 + 20 x $10.
    ("models/gemini-2.5-pro", 100 * 1.25 + 900 * 0.125 + 20 * 10),
])
def test_a_mostly_cached_prompt_is_charged_its_list_price(model, expected_micro):
    expected = math.ceil(round(expected_micro, 6))
    cost = seeded().cost(model, CACHED_TURN)
    assert expected <= cost <= expected * 1.01
    # The old charge, every prompt token at the input price, is above it.
    assert seeded().cost(model, TokenUsage(input_tokens=1_000, output_tokens=20)) > cost


def test_each_class_is_charged_at_its_own_price():
    p = price("3", "15", cached_input_per_million=usd("0.30"), cache_write_per_million=usd("3.75"),
              cache_write_1h_per_million=usd("6"), reasoning_output_per_million=usd("20"))
    usage = TokenUsage(input_tokens=10_000, cache_read_tokens=4_000, cache_write_tokens=2_000,
                       cache_write_1h_tokens=1_000, output_tokens=3_000, reasoning_tokens=1_000)
    # 3,000 uncached x 3 + 4,000 x 0.30 + 2,000 x 3.75 + 1,000 x 6 + 2,000 visible x 15 + 1,000 x 20
    assert p.cost(usage) == 9_000 + 1_200 + 7_500 + 6_000 + 30_000 + 20_000


def test_an_empty_class_costs_its_parent_class():
    p = price("3", "15", cache_write_per_million=usd("3.75"))
    assert (p.cached_input, p.cache_write, p.cache_write_1h, p.reasoning_output) == (
        usd("3"), usd("3.75"), usd("3.75"), usd("15"))


def test_the_cost_is_rounded_up_once_for_the_whole_request():
    p = price("0.10", "0.40", cached_input_per_million=usd("0.01"))
    # 0.9 + 0.09 + 0.4 micro-dollars: one micro-dollar, not three roundings up.
    assert p.cost(TokenUsage(input_tokens=10, cache_read_tokens=9, output_tokens=1)) == 1
    assert p.cost(TokenUsage()) == 0


def test_a_malformed_report_never_lowers_the_charge():
    p = price("3", "15", cached_input_per_million=usd("0.30"))
    # More cache reads than prompt tokens: the reads are charged, the uncached part is zero, not negative.
    assert p.cost(TokenUsage(input_tokens=100, cache_read_tokens=500)) == 150
    assert p.cost(TokenUsage(input_tokens=None, output_tokens=10, reasoning_tokens=-5)) == 150  # type: ignore[arg-type]


def test_the_ir_usage_can_be_passed_as_it_is():
    from proxy.providers.ir import Usage

    p = price("3", "15", cached_input_per_million=usd("0.30"))
    assert p.cost(Usage(input_tokens=1_000, output_tokens=20, cache_read_tokens=900)) == 870


def test_the_worst_case_takes_the_dearest_class():
    p = price("3", "15", cache_write_1h_per_million=usd("6"), reasoning_output_per_million=usd("20"))
    assert p.worst_case(1_000, 100) == 1_000 * 6 + 100 * 20


# --- Which price a model name takes ------------------------------------------------------

PRICED = ["gpt-4o", "gpt-4o-mini", "gpt-5", "gpt-3.5-turbo", "claude-opus-4", "claude-opus-4-1",
          "claude-3-5-sonnet", "claude-3-5-haiku", "gemini-2.5-pro", "gemini-2.0-flash"]


@pytest.fixture
def table() -> PriceTable:
    return PriceTable({("", name): price(str(n + 1)) for n, name in enumerate(PRICED)})


@pytest.mark.parametrize(("model", "takes"), [
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # the longest priced name it pins
    ("gpt-5-2025-08-07", "gpt-5"),
    ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),  # month-day snapshots
    ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
    ("claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet"),  # Bedrock's version suffix
    ("claude-opus-4-1@20250805", "claude-opus-4-1"),  # Vertex AI's
    ("claude-opus-4-20250514", "claude-opus-4"),  # Opus 4 itself, dated
    ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
    ("gemini-2.5-pro-001", "gemini-2.5-pro"),  # Gemini's stable versions
    ("gemini-2.0-flash-002", "gemini-2.0-flash"),
    ("models/gemini-2.5-pro", "gemini-2.5-pro"),
    ("models/gemini-2.5-pro-001", "gemini-2.5-pro"),
])
def test_a_pinned_version_takes_its_models_price(table, model, takes):
    assert table.lookup(model) == table.lookup(takes) is not None


@pytest.mark.parametrize("model", [
    "claude-opus-4-8",  # another generation, three times cheaper than Opus 4
    "claude-opus-4-5-20251101",
    "gpt-4o-audio-preview",
    "gpt-5.5",
    "gpt-5-mini",
    "gpt-4oops",
    "gemini-2.5-pro-preview-05-06",
    "gemini-2.5-flash",
    "claude-3-5-sonnet-v2-beta",
    "o3",
])
def test_another_model_never_takes_a_price_by_its_prefix(table, model):
    assert table.lookup(model) is None
    assert not table.is_priced(model)


def test_model_base_names_are_longest_first():
    assert model_base_names("claude-3-5-sonnet-20241022-v2:0") == [
        "claude-3-5-sonnet-20241022-v2:0", "claude-3-5-sonnet-20241022", "claude-3-5-sonnet"]
    assert model_base_names("claude-opus-4-8") == ["claude-opus-4-8"]


def test_a_providers_own_price_comes_before_one_for_any_provider():
    table = PriceTable({("", "claude-opus-4-8"): price("5"), ("bedrock", "claude-opus-4-8"): price("5.5")})
    assert table.lookup("claude-opus-4-8").input == usd("5")
    assert table.lookup("claude-opus-4-8", "anthropic").input == usd("5")
    assert table.lookup("claude-opus-4-8-20260101", "bedrock").input == usd("5.5")


def test_a_provider_wide_fallback_prices_only_that_providers_unpriced_models():
    table = PriceTable({("", "gpt-4o"): price("2.5"), ("local-llm", "*"): price("0.10")})
    assert table.lookup("llama-9", "local-llm").input == usd("0.10")
    assert table.lookup("gpt-4o", "local-llm").input == usd("2.5")  # a real price beats the fallback
    assert table.is_priced("llama-9", "local-llm")
    assert not table.is_priced("llama-9", "openai")
    assert not table.is_priced("llama-9")


# --- The seeded table ----------------------------------------------------------------------

@pytest.mark.django_db
@pytest.mark.parametrize("model", [
    "claude-opus-4-8",  # Claude Code 2.1.197's default
    "claude-haiku-4-5-20251001",  # and its small model
    "gpt-6.1-sol", "gpt-6.1-sol-2026-09-29",  # Codex CLI 0.169.0's default
    "gemini-2.5-pro", "gemini-3-pro-preview", "gemini-3.1-pro-preview", "gemini-3-flash-preview",
    "gemini-3.5-flash", "gemini-3.8-flash",  # Gemini CLI 0.61.0's models
])
def test_the_agents_default_models_are_seeded_with_cache_prices(model):
    found = seeded().lookup(model)
    assert found is not None and found.cached_input < found.input


@pytest.mark.django_db
def test_every_seeded_row_is_dated_and_sourced():
    rows = ModelPrice.objects.all()
    assert rows.count() >= 50
    for row in rows:
        assert row.source.startswith("https://"), row.model
        assert row.valid_from.year >= 2026
    opus = ModelPrice.objects.get(model="claude-opus-4-8")
    assert (opus.input_per_million, opus.cached_input_per_million, opus.cache_write_per_million,
            opus.cache_write_1h_per_million, opus.output_per_million) == (
        usd("5"), usd("0.50"), usd("6.25"), usd("10"), usd("25"))
    assert opus.source == "https://platform.claude.com/docs/en/about-claude/pricing"


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["claude-haiku-5-5", "gpt-6.1-terra", "gemini-3.1-flash-lite"])
def test_models_without_a_usable_published_price_stay_unpriced(model):
    assert not seeded().is_priced(model)


@pytest.mark.django_db
def test_a_scheduled_price_change_applies_from_its_date():
    from budgets.pricing import _load_prices

    before = _load_prices(datetime(2026, 12, 31, tzinfo=UTC)).lookup("gemini-3.8-flash")
    after = _load_prices(datetime(2027, 1, 2, tzinfo=UTC)).lookup("gemini-3.8-flash")
    assert (before.input, after.input) == (usd("0.75"), usd("1.50"))


def _seed_module():
    import importlib

    return importlib.import_module("budgets.migrations.0008_seed_model_price_token_classes")


@pytest.mark.django_db
def test_seeding_never_overwrites_an_edited_price():
    seed = _seed_module()
    ModelPrice.objects.all().delete()
    ModelPrice.objects.create(model="claude-opus-4-8", input_per_million=1, output_per_million=2, note="ours")
    # A row as 0003 left it gains its classes; the same row edited by someone does not.
    ModelPrice.objects.create(model="gpt-4o", input_per_million=usd("2.50"), output_per_million=usd("10"),
                              valid_from=seed.TABLE_START, note=seed.NOTE_0003)
    ModelPrice.objects.create(model="gpt-4o-mini", input_per_million=usd("0.20"), output_per_million=usd("0.60"),
                              valid_from=seed.TABLE_START, note=seed.NOTE_0003)
    seed.seed(apps, None)
    [opus] = ModelPrice.objects.filter(model="claude-opus-4-8")
    assert (opus.input_per_million, opus.cached_input_per_million, opus.note) == (1, None, "ours")
    assert ModelPrice.objects.get(model="gpt-4o").cached_input_per_million == usd("1.25")
    assert ModelPrice.objects.get(model="gpt-4o-mini").cached_input_per_million is None
    assert ModelPrice.objects.filter(model="gpt-6.1-sol").exists()
    seed.unseed(apps, None)
    assert not ModelPrice.objects.filter(model="gpt-6.1-sol").exists()
    assert ModelPrice.objects.get(model="gpt-4o").cached_input_per_million is None
    assert ModelPrice.objects.filter(model="claude-opus-4-8").get().note == "ours"


# --- The proxy's side: the request's classes, and models served without a price ----------


def _ctx(model: str, provider: str = "anthropic", **tokens: int) -> RequestContext:
    info = ProviderInfo(id=1, name=provider, kind="anthropic", base_url="http://upstream.invalid", credential="",
                        extra_headers=(), timeout_seconds=1, connect_timeout_seconds=1)
    ctx = RequestContext(caller=Caller.ANTHROPIC, endpoint="messages")
    ctx.deployment = DeploymentInfo(id=1, provider=info, upstream_model=model, weight=1, priority=0)
    for name, value in tokens.items():
        setattr(ctx, name, value)
    return ctx


@pytest.mark.django_db
def test_price_usage_charges_the_requests_cache_classes():
    ctx = _ctx("claude-sonnet-4-5-20250929", prompt_tokens=1_000, cache_read_tokens=900, completion_tokens=20)
    async_to_sync(price_usage)(ctx)
    assert ctx.cost_microusd == 870
    ctx = _ctx("claude-sonnet-4-5", prompt_tokens=1_000, cache_write_tokens=600, cache_write_1h_tokens=400,
               completion_tokens=0)
    async_to_sync(price_usage)(ctx)
    assert ctx.cost_microusd == 600 * 3.75 + 400 * 6


@pytest.mark.django_db
def test_an_unpriced_model_is_noted_for_the_health_page():
    unpriced_seen_clear()
    ctx = _ctx("claude-opus-9", prompt_tokens=10, completion_tokens=10)
    async_to_sync(price_usage)(ctx)
    assert ctx.cost_microusd is None
    [seen] = unpriced_seen()
    assert (seen.model, seen.provider) == ("claude-opus-9", "anthropic")
    unpriced_seen_clear()
    assert unpriced_seen() == []


def test_the_unpriced_list_is_bounded_and_newest_first(settings):
    from budgets import pricing

    unpriced_seen_clear()
    for n in range(pricing.UNPRICED_MAX + 5):
        async_to_sync(unpriced_seen_add)(f"model-{n}")
    seen = unpriced_seen()
    assert len(seen) == pricing.UNPRICED_MAX
    assert seen[0].model == f"model-{pricing.UNPRICED_MAX + 4}"
    assert "model-0" not in {row.model for row in seen}
    unpriced_seen_clear()


@pytest.mark.django_db
def test_a_cost_budget_reserves_the_dearest_class(personas, alice, demo_route):
    from tests.proxy.client import chat

    # $1 in, but a 1-hour cache write costs $100: a prompt of ~10 tokens may cost ~$0.001.
    ModelPrice.objects.create(model="sandbox-model", input_per_million=usd("1"), output_per_million=usd("1"),
                              cache_write_1h_per_million=usd("100"))
    budget(personas.alice, metric="cost_usd", limit=500, period="month")  # $0.0005
    body = {"model": "demo", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}
    refused = chat(alice, body)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "budget_exceeded"
