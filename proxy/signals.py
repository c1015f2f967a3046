"""Any change to providers, routes or deployments drops every worker's route table."""
from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from proxy.models import Deployment, ModelRoute, Provider


def route_cache_invalidate() -> None:
    from proxy.routing import route_cache

    route_cache.invalidate_everywhere()


@receiver([post_save, post_delete], sender=Provider)
@receiver([post_save, post_delete], sender=ModelRoute)
@receiver([post_save, post_delete], sender=Deployment)
def _on_routing_change(sender, **kwargs) -> None:
    transaction.on_commit(route_cache_invalidate)
