from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.conf import settings

from budgets.models import Budget, RateLimit
from budgets.signals import limits_cache, price_cache

requires_postgres_and_redis = pytest.mark.skipif(
    not settings.DATABASES["default"]["ENGINE"].endswith("postgresql") or not settings.REDIS_URL,
    reason="needs DATABASE_URL=postgres://... and REDIS_URL (the production setup)",
)
requires_redis = pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL")


@pytest.fixture(autouse=True)
def database_copy_at_once(settings) -> None:
    """In-process tests read BudgetUsage right after a request: write it with the request."""
    settings.TOLLGATE_BUDGET_MIRROR_SECONDS = 0


@pytest.fixture(autouse=True)
def fresh_limit_caches() -> Iterator[None]:
    """Rolled-back tests send no signals: never let one test's limits reach the next."""
    limits_cache.clear_local()
    price_cache.clear_local()
    yield
    limits_cache.clear_local()
    price_cache.clear_local()


@pytest.fixture
def alice(personas):
    return personas.alice_key


def budget(consumer, **fields) -> Budget:
    fields.setdefault("period", "day")
    fields.setdefault("timezone", "UTC")
    return Budget.objects.create(consumer=consumer, **fields)


def rate_limit(consumer, **fields) -> RateLimit:
    return RateLimit.objects.create(consumer=consumer, **fields)
