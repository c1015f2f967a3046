"""budgets:, rate_limits: and prices: in gateway_apply, exactly as issue 4's YAML shows them."""
from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from budgets.models import Budget, ModelPrice, RateLimit
from proxy.models import ModelRoute

pytestmark = pytest.mark.django_db

ISSUE_YAML = """\
consumers:
  - name: production-agent
    budgets:
      - {metric: tokens, limit: 100000, period: day, timezone: UTC, mode: hard}
      - {metric: requests, limit: 1000, period: day}
      - {metric: cost_usd, limit: 50, period: month, mode: soft, alert_at_percent: 80}
    rate_limits:
      - {requests: 60, window_seconds: 60, rejected_code: 429, rejected_msg: "Rate limit exceeded"}
      - {tokens: 20000, window_seconds: 60}
routes:
  - model: smart
    default_max_tokens: 1024        # reserved when a request gives no max_tokens
prices:
  - {model: gpt-4o-mini, input_per_million_usd: 0.15, output_per_million_usd: 0.60}
"""


def apply(tmp_path: Path, text: str, *args: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    out = io.StringIO()
    call_command("gateway_apply", str(path), *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def export() -> str:
    out = io.StringIO()
    call_command("gateway_export", stdout=out)
    return out.getvalue()


def test_the_issues_yaml_applies_and_then_changes_nothing(tmp_path):
    apply(tmp_path, ISSUE_YAML)
    budgets = {b.metric: b for b in Budget.objects.filter(consumer__name="production-agent")}
    assert budgets["tokens"].limit == 100_000 and budgets["tokens"].mode == "hard"
    assert budgets["requests"].limit == 1000 and budgets["requests"].period == "day"
    cost = budgets["cost_usd"]
    assert (cost.limit, cost.period, cost.mode, cost.alert_at_percent) == (50_000_000, "month", "soft", 80)
    limits = list(RateLimit.objects.order_by("id").values_list("requests", "tokens", "window_seconds",
                                                                "rejected_code", "rejected_msg"))
    assert limits == [(60, None, 60, 429, "Rate limit exceeded"), (None, 20000, 60, 429, "")]
    assert ModelRoute.objects.get(model="smart").default_max_tokens == 1024
    price = ModelPrice.objects.filter(model="gpt-4o-mini").latest("valid_from")
    assert (price.input_per_million, price.output_per_million) == (150_000, 600_000)
    assert apply(tmp_path, ISSUE_YAML).strip().endswith("No changes.")  # seeded prices are left alone


def test_changing_a_limit_updates_the_budget_in_place(tmp_path):
    apply(tmp_path, ISSUE_YAML)
    before = Budget.objects.get(metric="tokens")
    out = apply(tmp_path, ISSUE_YAML.replace("limit: 100000", "limit: 200000"))
    assert "limit 100000 → 200000" in out
    after = Budget.objects.get(metric="tokens")
    assert (after.pk, after.limit) == (before.pk, 200_000)  # same row: usage so far is kept


def test_a_changed_price_applies_from_now_and_keeps_the_old_one(tmp_path):
    apply(tmp_path, ISSUE_YAML)
    apply(tmp_path, ISSUE_YAML.replace("input_per_million_usd: 0.15", "input_per_million_usd: 0.20"))
    rows = list(ModelPrice.objects.filter(model="gpt-4o-mini").order_by("valid_from")
                .values_list("input_per_million", flat=True))
    assert rows[-1] == 200_000 and 150_000 in rows[:-1]


def test_budgets_and_prices_round_trip_through_export(tmp_path):
    apply(tmp_path, ISSUE_YAML)
    text = export()
    assert "- {metric: cost_usd, limit: 50, period: month, mode: soft, alert_at_percent: 80}" in text
    assert "- {tokens: 20000, window_seconds: 60}" in text
    assert "- {model: gpt-4o-mini, input_per_million_usd: 0.15, output_per_million_usd: 0.6}" in text
    assert apply(tmp_path, text).strip() == "No changes."


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("{tokens: 20000, window_seconds: 60}", "{tokens: 20000, requests: 5, window_seconds: 60}",
     "either requests or tokens"),
    ("metric: requests, limit: 1000", "metric: requests, limit: 10.5", "whole number"),
    ("period: month, mode: soft", "period: year, mode: soft", "invalid period 'year'"),
    ("timezone: UTC", "timezone: Mars/Olympus", "not a known IANA time zone"),
    ("{metric: requests, limit: 1000, period: day}", "{metric: tokens, limit: 1000, period: day}",
     "duplicate budget tokens/day"),
])
def test_bad_budgets_are_refused_with_their_line(tmp_path, old, new, expected):
    assert old in ISSUE_YAML
    with pytest.raises(CommandError, match=expected) as info:
        apply(tmp_path, ISSUE_YAML.replace(old, new))
    assert "gateway.yaml:" in str(info.value)
    assert not Budget.objects.exists()


CLASSES_YAML = """\
prices:
  - {model: claude-opus-4-8, input_per_million_usd: 5, cached_input_per_million_usd: 0.5,
     cache_write_per_million_usd: 6.25, cache_write_1h_per_million_usd: 10, output_per_million_usd: 25,
     source: "https://platform.claude.com/docs/en/about-claude/pricing"}
  - {model: o9, input_per_million_usd: 2, output_per_million_usd: 8, reasoning_output_per_million_usd: 12}
  - {model: claude-opus-4-8, provider: bedrock, input_per_million_usd: 5.5, output_per_million_usd: 27.5}
  - {model: "*", provider: local-llm, input_per_million_usd: 0.1, output_per_million_usd: 0.1,
     note: everything the local server runs}
"""


def test_every_token_class_round_trips_through_apply_and_export(tmp_path):
    apply(tmp_path, CLASSES_YAML)
    opus = ModelPrice.objects.filter(model="claude-opus-4-8", provider="").latest("valid_from")
    assert (opus.input_per_million, opus.cached_input_per_million, opus.cache_write_per_million,
            opus.cache_write_1h_per_million, opus.output_per_million, opus.reasoning_output_per_million) == (
        5_000_000, 500_000, 6_250_000, 10_000_000, 25_000_000, None)
    assert opus.source == "https://platform.claude.com/docs/en/about-claude/pricing"
    assert ModelPrice.objects.get(model="o9").reasoning_output_per_million == 12_000_000
    assert ModelPrice.objects.get(model="claude-opus-4-8", provider="bedrock").input_per_million == 5_500_000
    assert ModelPrice.objects.get(model="*", provider="local-llm").note == "everything the local server runs"
    text = export()
    assert ("- {model: claude-opus-4-8, input_per_million_usd: 5, cached_input_per_million_usd: 0.5, "
            "cache_write_per_million_usd: 6.25, cache_write_1h_per_million_usd: 10, output_per_million_usd: 25, "
            "source: 'https://platform.claude.com/docs/en/about-claude/pricing'") in text
    assert "- {model: claude-opus-4-8, provider: bedrock, input_per_million_usd: 5.5," in text
    assert apply(tmp_path, text).strip() == "No changes."
    assert apply(tmp_path, CLASSES_YAML).strip().endswith("No changes.")


def test_a_changed_cache_price_is_a_new_row_from_now(tmp_path):
    apply(tmp_path, CLASSES_YAML)
    cheaper = CLASSES_YAML.replace("cached_input_per_million_usd: 0.5", "cached_input_per_million_usd: 0.25")
    out = apply(tmp_path, cheaper)
    assert "~ price claude-opus-4-8: input $5, cached_input $0.25" in out
    rows = ModelPrice.objects.filter(model="claude-opus-4-8", provider="").order_by("valid_from")
    assert [r.cached_input_per_million for r in rows][-2:] == [500_000, 250_000]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("cached_input_per_million_usd: 0.5", "cached_input_per_million_usd: -0.5", "must be >= 0"),
    ("cache_write_1h_per_million_usd: 10", "cache_write_1h_per_million_usd: ten", "must be a number"),
    ("provider: bedrock, ", "", "duplicate price for 'claude-opus-4-8'"),
    ("output_per_million_usd: 8,", "", "missing the required key 'output_per_million_usd'"),
])
def test_bad_prices_are_refused_with_their_line(tmp_path, old, new, expected):
    assert old in CLASSES_YAML
    with pytest.raises(CommandError, match=expected) as info:
        apply(tmp_path, CLASSES_YAML.replace(old, new))
    assert "gateway.yaml:" in str(info.value)
    assert not ModelPrice.objects.filter(model="o9").exists()


def test_pruning_prices_goes_by_provider_and_model(tmp_path):
    apply(tmp_path, CLASSES_YAML)
    bedrock = ("  - {model: claude-opus-4-8, provider: bedrock, input_per_million_usd: 5.5, "
               "output_per_million_usd: 27.5}\n")
    kept = CLASSES_YAML.replace(bedrock, "")
    out = apply(tmp_path, kept, "--prune")
    assert "- price claude-opus-4-8 via bedrock" in out
    assert not ModelPrice.objects.filter(provider="bedrock").exists()
    assert ModelPrice.objects.filter(model="claude-opus-4-8", provider="").exists()
