"""Step 3 and the choice in step 5: which deployments may serve a request, in what order."""
from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from budgets.selectors import KeyInfo
from gateway_site.lib.db import run_db
from gateway_site.lib.localcache import LocalCache
from proxy.errors import GatewayError
from proxy.models import Deployment, ModelRoute, Provider

route_cache = LocalCache(
    "routes",
    ttl=settings.TOLLGATE_ROUTE_CACHE_SECONDS,
    recheck=settings.TOLLGATE_AUTH_RECHECK_SECONDS,
)


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    id: int
    name: str
    kind: str
    base_url: str
    credential: str = field(repr=False)  # never printed, logged or audited
    extra_headers: tuple[tuple[str, str], ...]
    timeout_seconds: float
    connect_timeout_seconds: float


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    id: int
    provider: ProviderInfo
    upstream_model: str
    weight: int
    priority: int


@dataclass(frozen=True, slots=True)
class RouteInfo:
    id: int
    model: str
    deployments: tuple[DeploymentInfo, ...]
    created: int  # unix time, for the models list
    default_max_tokens: int
    max_retries: int = 2
    retry_budget_seconds: float = 30.0
    failover_statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504, 529})
    allow_pin_fallback: bool = False
    allow_store: bool = False
    # The most output tokens a request may ask for (None: no cap); the bound sent upstream is
    # min(the client's, this), or default_max_tokens capped by this (proxy.bounds).
    max_output_tokens: int | None = None
    # Pass service_tier, store: true and priced anthropic-beta values through (proxy.pricefields).
    allow_price_fields: bool = False


def _load_route_table() -> dict[str, RouteInfo]:
    providers: dict[int, ProviderInfo] = {}
    for p in Provider.objects.filter(enabled=True):
        providers[p.pk] = ProviderInfo(
            id=p.pk,
            name=p.name,
            kind=p.kind,
            base_url=p.base_url.rstrip("/"),
            credential=p.read_credential(),
            extra_headers=tuple((str(k), str(v)) for k, v in (p.extra_headers or {}).items()),
            timeout_seconds=p.timeout_seconds,
            connect_timeout_seconds=p.connect_timeout_seconds,
        )
    by_route: dict[int, list[DeploymentInfo]] = {}
    for d in Deployment.objects.filter(enabled=True).order_by("priority", "id"):
        provider = providers.get(d.provider_id)
        if provider is None:
            continue
        by_route.setdefault(d.route_id, []).append(
            DeploymentInfo(
                id=d.pk,
                provider=provider,
                upstream_model=d.upstream_model,
                weight=d.weight,
                priority=d.priority,
            )
        )
    table: dict[str, RouteInfo] = {}
    for route in ModelRoute.objects.filter(enabled=True):
        table[route.model] = RouteInfo(
            id=route.pk,
            model=route.model,
            deployments=tuple(by_route.get(route.pk, ())),
            created=int(route.updated_at.timestamp()),
            default_max_tokens=route.default_max_tokens,
            max_retries=route.max_retries,
            retry_budget_seconds=route.retry_budget_seconds,
            failover_statuses=frozenset(s for s in route.failover_statuses or () if isinstance(s, int)),
            allow_pin_fallback=route.allow_pin_fallback,
            allow_store=route.allow_store,
            max_output_tokens=route.max_output_tokens,
            allow_price_fields=route.allow_price_fields,
        )
    return table


async def route_table() -> dict[str, RouteInfo]:
    """Every enabled route, cached per worker; one database round trip on a miss."""
    return await route_cache.aget_or_load("table", lambda: run_db(_load_route_table))


def _route_not_found(model: str) -> GatewayError:
    # The same answer whether the route does not exist or this key may not use
    # it, so a key cannot probe for routes it has no access to.
    return GatewayError(
        "not_found",
        f"The model '{model}' does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


async def routes_for_key(key: KeyInfo) -> list[RouteInfo]:
    table = await route_table()
    return [r for name, r in sorted(table.items()) if key.allowed_routes is None or name in key.allowed_routes]


async def resolve_route(key: KeyInfo, model: Any) -> RouteInfo:
    if not isinstance(model, str) or not model:
        raise GatewayError("invalid_request", "'model' must be a non-empty string.", param="model")
    if key.allowed_routes is not None and model not in key.allowed_routes:
        raise _route_not_found(model)
    route = (await route_table()).get(model)
    if route is None:
        raise _route_not_found(model)
    return route


def deployment_order(
    route: RouteInfo, *, rng: random.Random | None = None, deployments: Iterable[DeploymentInfo] | None = None,
) -> list[DeploymentInfo]:
    """Deployments to try, best priority first; within a priority, a weighted random order.

    `deployments` narrows the choice (to the healthy ones, or to a pinned provider's).
    """
    choices = rng.choices if rng is not None else random.choices
    candidates = list(route.deployments if deployments is None else deployments)
    ordered: list[DeploymentInfo] = []
    priorities = sorted({d.priority for d in candidates})
    for priority in priorities:
        pool = [d for d in candidates if d.priority == priority and d.weight > 0]
        while pool:
            chosen = choices(pool, weights=[d.weight for d in pool])[0]
            ordered.append(chosen)
            pool.remove(chosen)
    return ordered
