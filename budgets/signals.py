"""Keep the workers' key caches honest: any change to a key or consumer invalidates them."""
from __future__ import annotations

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from budgets.models import ApiKey, Consumer
from gateway_site.localcache import LocalCache

key_cache = LocalCache(
    "keys",
    ttl=settings.TOLLGATE_AUTH_CACHE_SECONDS,
    recheck=settings.TOLLGATE_AUTH_RECHECK_SECONDS,
)


def key_cache_invalidate() -> None:
    key_cache.invalidate_everywhere()


@receiver([post_save, post_delete], sender=ApiKey)
@receiver([post_save, post_delete], sender=Consumer)
def _on_key_or_consumer_change(sender, **kwargs) -> None:
    transaction.on_commit(key_cache_invalidate)
