"""Pass-through fields that change what a request costs, or what the provider keeps (issue #16).

A same-format call sends the client's body and some of its headers upstream as they are, so a
client could ask the provider for a dearer service than the price table charges, or for its
data to be kept, without the gateway knowing. Unless the route allows it (`allow_price_fields`),
these are removed before the call:

- `service_tier` other than `auto` / `default` (OpenAI Chat Completions and Responses):
  `priority` costs more per token, `flex` and `scale` are billed apart; the price table holds the
  standard tier.
- `store: true` on Chat Completions (the provider keeps the completion); `store: false` is always
  accepted. (/v1/responses handles `store` with its route's `allow_store`.)
- `anthropic-beta` values that bill beyond tokens or change the rate: server-side tools (code
  execution, web fetch and search, MCP connectors, skills), the Files API (kept files), and
  `context-1m-*` (prompts above 200K tokens at the long-context rate, which the price table does
  not express). Every other beta value passes, so the coding agents' defaults keep working:
  Claude Code sends `context-1m-2025-08-07`, which changes nothing below 200K tokens.
"""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("tollgate.budgets")

STANDARD_TIERS = frozenset({"auto", "default"})
PRICED_BETA_PREFIXES = ("context-1m-", "code-execution-", "web-fetch-", "web-search-", "mcp-client-",
                        "files-api-", "skills-")


def _beta_allowed(value: str) -> bool:
    return not value.strip().lower().startswith(PRICED_BETA_PREFIXES)


def price_fields_strip(wire: str, payload: dict[str, Any], headers: dict[str, str], *,
                       request_id: str = "") -> list[str]:
    """Remove from a same-format upstream body (in place) and the client's headers (lowercased names,
    in place) what changes price or retention; returns what was removed, for the log."""
    removed: list[str] = []
    if wire in ("openai", "responses"):
        tier = payload.get("service_tier")
        if tier is not None and tier not in STANDARD_TIERS:
            del payload["service_tier"]
            removed.append(f"service_tier={tier}")
    if wire == "openai" and payload.get("store") is True:
        del payload["store"]
        removed.append("store=true")
    beta = headers.get("anthropic-beta")
    if wire == "anthropic" and beta:
        values = [v.strip() for v in beta.split(",") if v.strip()]
        kept = [v for v in values if _beta_allowed(v)]
        if len(kept) != len(values):
            removed += [f"anthropic-beta={v}" for v in values if not _beta_allowed(v)]
            if kept:
                headers["anthropic-beta"] = ",".join(kept)
            else:
                del headers["anthropic-beta"]
    if removed:
        logger.info("request %s: removed before the upstream call (the route does not allow price fields): %s",
                    request_id, ", ".join(removed))
    return removed
