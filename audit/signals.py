"""Keep the workers' audit policy caches honest, and the groups in place after a flush."""
from __future__ import annotations

from django.db import transaction
from django.db.models.signals import post_delete, post_migrate, post_save
from django.dispatch import receiver

from audit.models import AuditPolicy


def policy_cache_invalidate() -> None:
    from audit.selectors import policy_cache

    policy_cache.invalidate_everywhere()


@receiver([post_save, post_delete], sender=AuditPolicy)
def _on_policy_change(sender, **kwargs) -> None:
    transaction.on_commit(policy_cache_invalidate)


def _on_post_migrate(sender, app_config=None, using="default", apps=None, **kwargs) -> None:
    # The data migration creates the groups; this keeps them (and their
    # permissions for models added later) after `flush` and later migrations.
    if app_config is None or app_config.label != "audit" or apps is None:
        return
    from audit.permissions import groups_ensure

    groups_ensure(apps, using=using)


post_migrate.connect(_on_post_migrate, dispatch_uid="audit-groups")
