"""Step 4 of the request path (admit) and the settling half of step 8.

The proxy side of budgets and rate limits: asks `budgets` to admit a request
before the upstream call and to settle it afterwards. Filled in by the budgets
issue (#4); until then every request is admitted and nothing is metered.
"""
from __future__ import annotations

from typing import Any

from proxy.context import RequestContext


async def admit(ctx: RequestContext, body: dict[str, Any]) -> None:
    """Check rate limits and reserve budget; raise GatewayError('rate_limit', ...) to refuse."""


async def settle(ctx: RequestContext) -> None:
    """Charge real usage and release the reservation; runs once per request, also on failure."""


def limit_headers(ctx: RequestContext) -> dict[str, str]:
    """x-ratelimit-* headers for the response."""
    return {}
