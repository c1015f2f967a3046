"""The price table and what a request costs (docs/budgets.md, "The price table").

Providers price a request by *token class*, not by "prompt" and "completion": a
prompt token read from a cache costs a tenth (Anthropic, most OpenAI models) or
less of an uncached one, a cache write costs more (Anthropic: 1.25x for five
minutes, 2x for an hour), and every class has its own price per model, never a
fixed ratio. Charging a cache read at the input price overcharged a typical Claude
Code turn nearly four times ($0.0033 instead of $0.00087 for 900 of 1,000 prompt
tokens read from cache), so this module prices each class apart.

The usage comes in as plain integers (`TokenUsage`, or any object with the same
attribute names, such as the proxy's IR `Usage`): budgets never imports proxy.
Money is integer micro-dollars, rounded up once per request.
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

logger = logging.getLogger("tollgate.budgets")

MICRO = 1_000_000
# ModelPrice.model value that prices every model of its provider (or of every provider).
ANY_MODEL = "*"


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """One request's tokens by class, in the proxy IR's convention.

    `input_tokens` is the whole prompt, cache reads and writes included (OpenAI's and
    Gemini's convention); the cache classes are parts of it. `reasoning_tokens` is
    part of `output_tokens`. `cache_write_tokens` are the provider's default cache
    writes (Anthropic's five-minute ones), `cache_write_1h_tokens` Anthropic's
    one-hour writes.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-dollars per million tokens of each class, empty classes already resolved."""

    input: int
    output: int
    cached_input: int
    cache_write: int
    cache_write_1h: int
    reasoning_output: int

    @classmethod
    def from_row(cls, row: Any) -> Price:
        """From a ModelPrice: an empty class costs what its parent class costs (see the model)."""
        cache_write = _or(row.cache_write_per_million, row.input_per_million)
        return cls(
            input=row.input_per_million,
            output=row.output_per_million,
            cached_input=_or(row.cached_input_per_million, row.input_per_million),
            cache_write=cache_write,
            cache_write_1h=_or(row.cache_write_1h_per_million, cache_write),
            reasoning_output=_or(row.reasoning_output_per_million, row.output_per_million),
        )

    def cost(self, usage: Any) -> int:
        """Micro-dollars for `usage`, rounded up once.

        A provider that reports more cache tokens than prompt tokens (or more reasoning
        than output) is taken at its word for the dearer class: the cheaper remainder
        goes to zero, never below, so a malformed report never lowers the charge.
        """
        prompt = _count(usage, "input_tokens")
        read = _count(usage, "cache_read_tokens")
        write = _count(usage, "cache_write_tokens")
        write_1h = _count(usage, "cache_write_1h_tokens")
        output = _count(usage, "output_tokens")
        reasoning = _count(usage, "reasoning_tokens")
        uncached = max(0, prompt - read - write - write_1h)
        visible = max(0, output - reasoning)
        total = (uncached * self.input + read * self.cached_input + write * self.cache_write
                 + write_1h * self.cache_write_1h + visible * self.output + reasoning * self.reasoning_output)
        return -(-total // MICRO)

    def worst_case(self, prompt_tokens: int, output_tokens: int) -> int:
        """The most `prompt_tokens` in and `output_tokens` out can cost, whatever their classes
        turn out to be (a prompt written to the one-hour cache costs twice the input price)."""
        dearest_in = max(self.input, self.cached_input, self.cache_write, self.cache_write_1h)
        dearest_out = max(self.output, self.reasoning_output)
        return -(-(prompt_tokens * dearest_in + output_tokens * dearest_out) // MICRO)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _count(usage: Any, name: str) -> int:
    value = getattr(usage, name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# --- Which price a model name takes -------------------------------------------------

# A pinned version of a model: a date (20241022, 2024-08-06, @20240620), a month-day
# snapshot (0613), a three-digit stable version (-001), `latest`, or a Bedrock-style
# `-v1:0`. Anything else after the priced name (`-mini`, `-8`, `.5`, `-preview`) names
# another model or generation, which must have a price of its own.
_PIN = re.compile(
    r"[-@](?:\d{8}|\d{4}-\d{2}-\d{2}|(?:0[1-9]|1[0-2])\d{2}|0\d{2}|latest|v\d+(?::\d+)?)$"
)


def model_base_names(model: str) -> list[str]:
    """`model` and the names it is a pinned version of, longest first.

    `gpt-4o-2024-08-06` → [gpt-4o-2024-08-06, gpt-4o]; `claude-opus-4-8` → [claude-opus-4-8]
    (never claude-opus-4); `models/gemini-2.5-pro-001` → [gemini-2.5-pro-001, gemini-2.5-pro].
    """
    name = model.removeprefix("models/")  # Gemini's resource names
    names = [name]
    while (pin := _PIN.search(name)) is not None and pin.start() > 0:
        name = name[:pin.start()]
        names.append(name)
    return names


class PriceTable:
    """Current prices by (provider scope, model); "" is the scope of rows for any provider."""

    def __init__(self, prices: dict[tuple[str, str], Price] | None = None) -> None:
        self._prices = prices or {}
        self._resolved: dict[tuple[str, str], Price | None] = {}

    def lookup(self, model: str, provider: str | None = None) -> Price | None:
        """The price `model` is charged at through `provider` (a proxy Provider's name), or None.

        In order: the provider's own row for the model, then a row for any provider,
        each by exact name first and then as a pinned version of a priced name
        (`model_base_names`); then the provider's `*` row, then a `*` row for any
        provider. Never the price of another generation or size of the model.
        """
        key = (provider or "", model)
        try:
            return self._resolved[key]
        except KeyError:
            pass
        scopes = [provider, ""] if provider else [""]
        found = None
        for scope in scopes:
            for name in model_base_names(model):
                found = self._prices.get((scope, name))
                if found is not None:
                    break
            if found is not None:
                break
        else:
            for scope in scopes:
                found = self._prices.get((scope, ANY_MODEL))
                if found is not None:
                    break
        if len(self._resolved) < 10_000:
            self._resolved[key] = found
        return found

    def is_priced(self, model: str, provider: str | None = None) -> bool:
        """Whether a request to `model` through `provider` can be charged (its own price or a fallback)."""
        return self.lookup(model, provider) is not None

    def cost(self, model: str, usage: Any, provider: str | None = None) -> int | None:
        """Micro-dollars for `usage` (a TokenUsage or any object with its attributes), rounded
        up; None when the model has no price."""
        price = self.lookup(model, provider)
        return None if price is None else price.cost(usage)

    def worst_case(self, model: str, prompt_tokens: int, output_tokens: int,
                   provider: str | None = None) -> int | None:
        """What admission reserves for a cost budget; None when the model has no price."""
        price = self.lookup(model, provider)
        return None if price is None else price.worst_case(prompt_tokens, output_tokens)


def _load_prices(now: datetime | None = None) -> PriceTable:
    from django.utils import timezone

    from budgets.models import ModelPrice

    now = now or timezone.now()
    prices: dict[tuple[str, str], Price] = {}
    # Latest valid_from first: the first row seen for a (provider, model) is its current price.
    for row in ModelPrice.objects.filter(valid_from__lte=now).order_by("provider", "model", "-valid_from"):
        prices.setdefault((row.provider, row.model), Price.from_row(row))
    return PriceTable(prices)


async def price_table() -> PriceTable:
    """The current price table from this worker's memory (one database read per change)."""
    from budgets.signals import price_cache
    from gateway_site.lib.db import run_db

    return await price_cache.aget_or_load("table", lambda: run_db(_load_prices))


# --- Models served without a price (for the admin's health page) ---------------------

UNPRICED_KEY = "pricing:unpriced_seen"
UNPRICED_MAX = 50  # the names most recently seen; a health hint, not a log
_UNPRICED_REWRITE_SECONDS = 60.0
_unpriced_written: dict[tuple[str, str], float] = {}


@dataclass(frozen=True, slots=True)
class UnpricedModel:
    model: str
    provider: str
    last_seen: str  # ISO 8601, UTC


async def unpriced_seen_add(model: str, provider: str = "") -> None:
    """Note that `model` (through `provider`) was served without a price. Never raises.

    Kept in the shared cache so every worker's sightings show on one page; each worker
    writes a given name at most once a minute, so a busy unpriced model costs one
    shared-cache round trip a minute, not one per request. Concurrent writers may drop
    each other's newest name for a minute: it is a hint, not an account.
    """
    from django.utils import timezone

    from gateway_site.lib.sharedcache import cache

    now = time.monotonic()
    mark = (provider, model)
    if now - _unpriced_written.get(mark, -_UNPRICED_REWRITE_SECONDS) < _UNPRICED_REWRITE_SECONDS:
        return
    if len(_unpriced_written) > 10 * UNPRICED_MAX:
        _unpriced_written.clear()
    _unpriced_written[mark] = now
    try:
        seen = dict(await cache.aget(UNPRICED_KEY) or {})
        key = f"{provider}\x1f{model}"
        seen.pop(key, None)
        others = sorted(seen.items(), key=lambda item: item[1], reverse=True)[:UNPRICED_MAX - 1]
        await cache.aset(UNPRICED_KEY, {key: timezone.now().isoformat(), **dict(others)}, timeout=None)
    except Exception:
        logger.warning("could not record unpriced model %s", model, exc_info=True)


def unpriced_seen() -> list[UnpricedModel]:
    """Models served without a price lately, newest first (sync: for admin pages)."""
    from gateway_site.lib.sharedcache import cache

    try:
        seen = cache.get(UNPRICED_KEY) or {}
    except Exception:
        logger.warning("could not read unpriced models", exc_info=True)
        return []
    rows = []
    for key, last_seen in seen.items():
        provider, _, model = key.partition("\x1f")
        rows.append(UnpricedModel(model=model, provider=provider, last_seen=last_seen))
    return sorted(rows, key=lambda row: row.last_seen, reverse=True)


def unpriced_seen_clear() -> None:
    """Forget the sightings (after pricing the models, and between tests)."""
    from gateway_site.lib.sharedcache import cache

    _unpriced_written.clear()
    try:
        cache.delete(UNPRICED_KEY)
    except Exception:
        logger.warning("could not clear unpriced models", exc_info=True)
