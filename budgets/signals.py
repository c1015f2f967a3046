"""Keep the workers' key caches honest: any change to a key, consumer or team invalidates them."""
from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from budgets.models import ApiKey, Budget, Consumer, ModelPrice, RateLimit, Team
from gateway_site.lib.localcache import LocalCache

key_cache = LocalCache(
    "keys",
    ttl=settings.TOLLGATE_AUTH_CACHE_SECONDS,
    recheck=settings.TOLLGATE_AUTH_RECHECK_SECONDS,
)


def key_cache_invalidate() -> None:
    key_cache.invalidate_everywhere()


@receiver([post_save, post_delete], sender=ApiKey)
def _on_key_change(sender, **kwargs) -> None:
    transaction.on_commit(key_cache_invalidate)


# Budgets, rate limits and prices: cached per worker, dropped everywhere on change.
limits_cache = LocalCache(
    "limits",
    ttl=settings.TOLLGATE_LIMITS_CACHE_SECONDS,
    recheck=settings.TOLLGATE_AUTH_RECHECK_SECONDS,
)
price_cache = LocalCache(
    "prices",
    ttl=settings.TOLLGATE_LIMITS_CACHE_SECONDS,
    recheck=settings.TOLLGATE_AUTH_RECHECK_SECONDS,
)


def limits_cache_invalidate() -> None:
    limits_cache.invalidate_everywhere()


def price_cache_invalidate() -> None:
    price_cache.invalidate_everywhere()


@receiver([post_save, post_delete], sender=Budget)
@receiver([post_save, post_delete], sender=RateLimit)
def _on_limits_change(sender, **kwargs) -> None:
    # This process at once (admin and tests), every worker once committed.
    limits_cache.clear_local()
    transaction.on_commit(limits_cache_invalidate)


@receiver([post_save, post_delete], sender=Consumer)
@receiver([post_save, post_delete], sender=Team)
def _on_consumer_or_team_change(sender, **kwargs) -> None:
    # A key's entry carries its consumer's team (and whether both are active), and its limits
    # entry the team's budgets: a consumer joining or leaving a team, or a team deleted (its
    # members' team set to NULL by SQL, no signal of theirs), drops both, everywhere.
    limits_cache.clear_local()
    transaction.on_commit(key_cache_invalidate)
    transaction.on_commit(limits_cache_invalidate)


@receiver([post_save, post_delete], sender=ModelPrice)
def _on_price_change(sender, **kwargs) -> None:
    price_cache.clear_local()
    transaction.on_commit(price_cache_invalidate)
