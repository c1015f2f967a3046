"""Seed the price table by token class (issue #16): cache reads, cache writes and output.

Standard (non-batch, short-context) list prices in US dollars per million tokens,
compiled on 2026-12-01 from the providers' pricing pages as stored copies show them:

- Anthropic: platform.claude.com/docs/en/about-claude/pricing and the model pages
  (5-minute cache writes 1.25x, 1-hour writes 2x, cache hits 0.1x the input price on
  most models, 0.05x on Opus 5.5 and Sonnet 5.5: every class is stored, never a ratio);
- OpenAI: developers.openai.com/api/docs/pricing and its model pages (cached input
  per model; GPT-5.6 and later also charge cache writes, for 30 minutes' retention);
- Google: ai.google.dev/gemini-api/docs/pricing (context caching per model; no write
  surcharge; the hourly storage fee of explicit caches is not a per-request cost).

Included: Claude Code 2.1.197's default model (claude-opus-4-8) and its small model
(claude-haiku-4-5), Codex CLI 0.169.0's default (gpt-6.1-sol, the first of its bundled
catalog by priority) and Gemini CLI 0.61.0's models (auto: gemini-3-pro-preview or
gemini-3.1-pro-preview, gemini-2.5-pro, gemini-3-flash-preview, gemini-3.5-flash,
gemini-3.8-flash). `valid_from` is the date the price took effect where the source
gives it, else 2026-01-01 (the start of the table, as in 0003).

Rows are added only for models without any row, so prices edited in the admin or by
gateway_apply are never overwritten; rows of 0003 that nobody edited (same note, date
and prices) gain their cache classes and source in place. Models whose cache price
could not be confirmed keep an empty cached-input price (charged at the input price,
which over-counts) and say so in their note; models with no published price, or one
this table cannot express, are left unpriced (docs/budgets.md, "Unpriced models").
"""
from datetime import UTC, datetime

from django.db import migrations

TABLE_START = datetime(2026, 1, 1, tzinfo=UTC)
NOTE = "list price by token class, compiled 2026-12-01"
NOTE_0003 = "list price, compiled 2026-11-26"  # rows seeded by 0003_seed_model_prices
UNCONFIRMED = "; cache-read price not confirmed: cache reads are charged at the input price"

ANTHROPIC = "https://platform.claude.com/docs/en/about-claude/pricing"
OPENAI = "https://developers.openai.com/api/docs/pricing"
GEMINI = "https://ai.google.dev/gemini-api/docs/pricing"


def _openai_model(name: str) -> str:
    return f"https://developers.openai.com/api/docs/models/{name}"


def _date(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# model: (input, cached input, cache write (5 min / default), cache write 1 h, output,
#         valid_from or None for TABLE_START, source, note)
# USD per million tokens; None: the class has no price of its own (see ModelPrice).
_OPUS_45 = ("5.00", "0.50", "6.25", "10.00", "25.00")
_OPUS_4 = ("15.00", "1.50", "18.75", "30.00", "75.00")
_SONNET_4 = ("3.00", "0.30", "3.75", "6.00", "15.00")
_FABLE_5 = ("10.00", "1.00", "12.50", "20.00", "50.00")

PRICES: list[tuple] = [
    # --- Anthropic -----------------------------------------------------------------
    ("claude-opus-4-8", *_OPUS_45, None, ANTHROPIC, "Claude Code 2.1.197's default model"),
    ("claude-opus-4-7", *_OPUS_45, None, ANTHROPIC, ""),
    ("claude-opus-4-6", *_OPUS_45, None, ANTHROPIC, ""),
    ("claude-opus-4-5", *_OPUS_45, None, ANTHROPIC, ""),
    ("claude-opus-5", *_OPUS_45, "2026-07-24", "https://platform.claude.com/docs/en/models/opus-5/overview",
     ""),
    ("claude-opus-5-5", "4.00", "0.20", "5.00", "8.00", "20.00", "2026-09-22", ANTHROPIC,
     "cache hits 0.05x the input price"),
    ("claude-opus-4-1", *_OPUS_4, None, ANTHROPIC, "retired on the Claude API"),
    ("claude-opus-4-0", *_OPUS_4, None, ANTHROPIC, "Claude Opus 4; retired on the Claude API"),
    ("claude-opus-4", *_OPUS_4, None, ANTHROPIC, "Claude Opus 4; retired on the Claude API"),
    ("claude-sonnet-5-5", "2.00", "0.10", "2.50", "4.00", "10.00", "2026-10-07", ANTHROPIC,
     "cache hits cut from $0.20 to $0.10 on 2026-10-07"),
    ("claude-sonnet-5", "2.00", "0.20", "2.50", "4.00", "10.00", "2026-06-30",
     "https://platform.claude.com/docs/en/models/sonnet-5/overview", ""),
    ("claude-sonnet-4-6", *_SONNET_4, None, ANTHROPIC, ""),
    ("claude-sonnet-4-5", *_SONNET_4, None, ANTHROPIC, ""),
    ("claude-sonnet-4-0", *_SONNET_4, None, ANTHROPIC, "Claude Sonnet 4"),
    ("claude-sonnet-4", *_SONNET_4, None, ANTHROPIC, "Claude Sonnet 4"),
    ("claude-3-7-sonnet", *_SONNET_4, None, ANTHROPIC, "deprecated"),
    ("claude-haiku-4-5", "1.00", "0.10", "1.25", "2.00", "5.00", None, ANTHROPIC,
     "Claude Code 2.1.197's small/fast model"),
    ("claude-3-5-haiku", "0.80", "0.08", "1.00", "1.60", "4.00", None, ANTHROPIC, ""),
    ("claude-3-haiku", "0.25", "0.03", "0.30", "0.50", "1.25", None, ANTHROPIC, ""),
    ("claude-fable-5", *_FABLE_5, None, ANTHROPIC, ""),
    ("claude-mythos-5", *_FABLE_5, None, ANTHROPIC, "limited availability"),
    # --- OpenAI --------------------------------------------------------------------
    ("gpt-6.1-sol", "2.00", "0.10", "2.50", None, "10.00", "2026-09-29", _openai_model("gpt-6.1-sol"),
     "Codex CLI 0.169.0's default model; up to 272K input tokens (above: input and cache x2, output x1.5)"),
    ("gpt-6.2-sol", "2.00", "0.10", "2.50", None, "10.00", None, _openai_model("gpt-6.2-sol"),
     "up to 272K input tokens; 12-hour cache writes cost $5 per million"),
    ("gpt-6-sol", "2.00", "0.20", "2.50", None, "10.00", "2026-09-22", OPENAI, "up to 272K input tokens"),
    ("gpt-6-astra", "10.00", "1.00", "12.50", None, "50.00", "2026-09-03", _openai_model("gpt-6-astra"),
     "up to 272K input tokens"),
    ("gpt-6-luna", "0.10", "0.01", "0.125", None, "0.50", "2026-09-22", OPENAI, "up to 272K input tokens"),
    ("gpt-5.6-terra", "2.00", "0.20", "2.50", None, "12.00", "2026-07-30", OPENAI,
     "price cut of 2026-07-30; up to 272K input tokens"),
    ("gpt-5.6-luna", "0.20", "0.02", "0.25", None, "1.20", "2026-07-30", OPENAI,
     "price cut of 2026-07-30; up to 200K input tokens"),
    ("gpt-5.5", "5.00", "0.50", None, None, "30.00", None, OPENAI, "up to 272K input tokens"),
    ("gpt-5.4", "2.50", "0.25", None, None, "15.00", None, OPENAI, "up to 272K input tokens"),
    ("gpt-5.4-mini", "0.75", "0.075", None, None, "4.50", None, OPENAI, ""),
    ("gpt-5.4-nano", "0.20", "0.02", None, None, "1.25", None, OPENAI, ""),
    ("gpt-5.3-codex", "1.75", "0.175", None, None, "14.00", None, OPENAI, ""),
    ("gpt-5-mini", "0.25", "0.025", None, None, "2.00", None, OPENAI, ""),
    ("gpt-5-nano", "0.05", "0.005", None, None, "0.40", None, _openai_model("gpt-5-nano"), "deprecated"),
    ("gpt-4.1", "2.00", "0.50", None, None, "8.00", None, OPENAI, ""),
    ("gpt-4o", "2.50", "1.25", None, None, "10.00", None, OPENAI, ""),
    ("gpt-4o-mini", "0.15", "0.075", None, None, "0.60", None, OPENAI, ""),
    # --- Google Gemini ---------------------------------------------------------------
    ("gemini-2.5-pro", "1.25", "0.125", None, None, "10.00", None, GEMINI,
     "Gemini CLI 0.61.0's default model; prompts up to 200K tokens (above: $2.50 in, $0.25 cached, $15 out)"),
    ("gemini-3.1-pro-preview", "2.00", "0.20", None, None, "12.00", None, GEMINI,
     "prompts up to 200K tokens (above: $4 in, $0.40 cached, $18 out)"),
    ("gemini-3-pro-preview", "2.00", "0.20", None, None, "12.00", None, GEMINI,
     "Gemini CLI's preview model name; served by gemini-3.1-pro-preview since March 2026"),
    ("gemini-3-flash-preview", "0.50", "0.05", None, None, "3.00", None, GEMINI, "Gemini CLI's preview flash model"),
    ("gemini-3.5-flash", "1.50", "0.15", None, None, "9.00", None, GEMINI, "Gemini CLI 0.61.0's default flash model"),
    ("gemini-3.8-flash", "0.75", "0.075", None, None, "3.75", None, GEMINI,
     "promotional price through 2026-12-31"),
    ("gemini-3.8-flash", "1.50", None, None, None, "7.50", "2027-01-01", GEMINI,
     "price from 2027-01-01" + UNCONFIRMED),
    ("gemini-3.5-flash-lite", "0.30", None, None, None, "2.50", None, GEMINI, UNCONFIRMED.removeprefix("; ")),
]


def _micro(usd: str | None) -> int | None:
    if usd is None:
        return None
    whole, _, frac = usd.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def _classes(entry: tuple) -> dict:
    _model, input_usd, cached, write, write_1h, output_usd, _valid, source, _note = entry
    return {
        "input_per_million": _micro(input_usd),
        "cached_input_per_million": _micro(cached),
        "cache_write_per_million": _micro(write),
        "cache_write_1h_per_million": _micro(write_1h),
        "output_per_million": _micro(output_usd),
        "source": source,
    }


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("budgets", "ModelPrice")
    priced_before = set(ModelPrice.objects.values_list("model", flat=True))
    for entry in PRICES:
        model, valid, note = entry[0], entry[6], entry[8]
        classes = _classes(entry)
        if model in priced_before:
            # 0003's own row, untouched since: add what it lacked. Anything else is left alone.
            ModelPrice.objects.filter(
                model=model, provider="", valid_from=TABLE_START, note=NOTE_0003,
                input_per_million=classes["input_per_million"], output_per_million=classes["output_per_million"],
                cached_input_per_million=None, source="",
            ).update(**classes)
            continue
        ModelPrice.objects.create(
            model=model, provider="", valid_from=_date(valid) if valid else TABLE_START,
            note=f"{NOTE}; {note}" if note else NOTE, **classes,
        )
    # The rest of 0003's untouched rows: their cache prices could not be confirmed (see the
    # report in docs/budgets.md), but where their price comes from can be said.
    for row in ModelPrice.objects.filter(note=NOTE_0003, valid_from=TABLE_START, source=""):
        row.source = GEMINI if row.model.startswith("gemini-") else ANTHROPIC if row.model.startswith(
            "claude-") else OPENAI
        row.save(update_fields=["source"])


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("budgets", "ModelPrice")
    ModelPrice.objects.filter(note__startswith=NOTE).delete()
    ModelPrice.objects.filter(note=NOTE_0003, valid_from=TABLE_START).update(
        cached_input_per_million=None, cache_write_per_million=None, cache_write_1h_per_million=None, source="",
    )


class Migration(migrations.Migration):
    dependencies = [("budgets", "0007_model_price_token_classes")]

    operations = [migrations.RunPython(seed, unseed)]
