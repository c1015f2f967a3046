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
