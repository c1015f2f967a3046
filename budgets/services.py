"""Writes for consumers and keys. Keyword-only, named <thing>_<action>."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from budgets.keys import key_digest, key_generate, key_visible_prefix
from budgets.models import ApiKey, Consumer


@dataclass(frozen=True)
class IssuedKey:
    """A newly issued key. `plaintext` exists only here: it is never stored."""

    key: ApiKey
    plaintext: str


@transaction.atomic
def key_issue(
    *,
    consumer: Consumer,
    name: str = "",
    expires_at: datetime | None = None,
    expires_in_days: int | None = None,
    allowed_routes: list[str] | None = None,
) -> IssuedKey:
    if expires_in_days is not None:
        expires_at = timezone.now() + timedelta(days=expires_in_days)
    plaintext = key_generate()
    key = ApiKey.objects.create(
        consumer=consumer,
        name=name,
        prefix=key_visible_prefix(plaintext),
        digest=key_digest(plaintext),
        expires_at=expires_at,
        allowed_routes=list(allowed_routes or []),
    )
    return IssuedKey(key=key, plaintext=plaintext)


def key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke a key; idempotent (a revoked key keeps its first revocation time)."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db(fields=["revoked_at"])
    # .update() sends no signal, so invalidate the key caches here.
    from budgets.signals import key_cache_invalidate

    transaction.on_commit(key_cache_invalidate)
    return key


def key_touch(*, key_ids: list[int], when: datetime) -> None:
    """Record last use; called at most once a minute per key, off the request path."""
    ApiKey.objects.filter(pk__in=key_ids).update(last_used_at=when)
