"""Seed the price table with list prices of common OpenAI, Anthropic and Gemini models.

Prices are standard (non-batch, non-cached, prompts up to 200K tokens) list prices in
US dollars per million tokens, as published on the providers' pricing pages
(platform.openai.com/docs/pricing, docs.anthropic.com/en/docs/about-claude/pricing,
ai.google.dev/gemini-api/docs/pricing) and compiled on 2026-11-26 from copies of
those pages dated March to June 2026. They are stored as integer micro-dollars and
are valid from 2026-01-01; edit them in the admin or with a `prices:` section in
gateway_apply when a provider changes its list. Reverting removes only these rows.
"""
from datetime import UTC, datetime

from django.db import migrations

VALID_FROM = datetime(2026, 1, 1, tzinfo=UTC)
NOTE = "list price, compiled 2026-11-26"

# model: (input USD per million tokens, output USD per million tokens)
PRICES = {
    # OpenAI
    "gpt-5.4": ("2.50", "15.00"),
    "gpt-5.1": ("1.25", "10.00"),
    "gpt-5": ("1.25", "10.00"),
    "gpt-5-mini": ("0.25", "2.00"),
    "gpt-5-nano": ("0.05", "0.40"),
    "gpt-4.1": ("2.00", "8.00"),
    "gpt-4.1-mini": ("0.40", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.40"),
    "gpt-4o": ("2.50", "10.00"),
    "gpt-4o-mini": ("0.15", "0.60"),
    "o3": ("2.00", "8.00"),
    "o3-mini": ("1.10", "4.40"),
    "o4-mini": ("1.10", "4.40"),
    # Anthropic
    "claude-opus-4-6": ("5.00", "25.00"),
    "claude-opus-4-5": ("5.00", "25.00"),
    "claude-opus-4-1": ("15.00", "75.00"),
    "claude-opus-4": ("15.00", "75.00"),
    "claude-sonnet-4-6": ("3.00", "15.00"),
    "claude-sonnet-4-5": ("3.00", "15.00"),
    "claude-sonnet-4": ("3.00", "15.00"),
    "claude-haiku-4-5": ("1.00", "5.00"),
    "claude-3-5-haiku": ("0.80", "4.00"),
    "claude-3-haiku": ("0.25", "1.25"),
    # Google Gemini
    "gemini-3.1-pro-preview": ("2.00", "12.00"),
    "gemini-3-flash-preview": ("0.50", "3.00"),
    "gemini-2.5-pro": ("1.25", "10.00"),
    "gemini-2.5-flash": ("0.30", "2.50"),
    "gemini-2.5-flash-lite": ("0.10", "0.40"),
    "gemini-2.0-flash": ("0.10", "0.40"),
}


def _micro(usd: str) -> int:
    whole, _, frac = usd.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("budgets", "ModelPrice")
    for model, (input_usd, output_usd) in PRICES.items():
        ModelPrice.objects.get_or_create(
            model=model, valid_from=VALID_FROM,
            defaults={"input_per_million": _micro(input_usd), "output_per_million": _micro(output_usd),
                      "note": NOTE},
        )


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("budgets", "ModelPrice")
    ModelPrice.objects.filter(model__in=list(PRICES), valid_from=VALID_FROM, note=NOTE).delete()


class Migration(migrations.Migration):
    dependencies = [("budgets", "0002_budgets_ratelimits_prices")]

    operations = [migrations.RunPython(seed, unseed)]
