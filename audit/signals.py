"""Keep the groups in place after a flush.

(A consumer's body mode needs no cache of its own: it comes with the request, from
the key's cached entry, which is dropped everywhere when the consumer changes.)
"""
from __future__ import annotations

from django.db.models.signals import post_migrate


def _on_post_migrate(sender, app_config=None, using="default", apps=None, **kwargs) -> None:
    # The data migration creates the groups; this keeps them (and their
    # permissions for models added later) after `flush` and later migrations.
    if app_config is None or app_config.label != "audit" or apps is None:
        return
    from audit.permissions import groups_ensure

    groups_ensure(apps, using=using)


post_migrate.connect(_on_post_migrate, dispatch_uid="audit-groups")
