"""Gateway keys: their format, and issuing, rotating, revoking and touching them.

A key is `tg-` followed by 43 URL-safe characters (256 random bits). Only its SHA-256
digest and a short visible prefix are stored; the plaintext exists once, in IssuedKey.
The admin, the admin API and the management commands all issue and revoke through
here, so a key's lifecycle has one implementation.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from budgets.models import ApiKey, Budget, Consumer, RateLimit
from budgets.signals import key_cache_invalidate

KEY_PREFIX = "tg-"
VISIBLE_PREFIX_LENGTH = 10  # "tg-" and 7 random characters: enough to tell keys apart


def key_generate() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8", "surrogatepass")).hexdigest()


def key_visible_prefix(raw_key: str) -> str:
    return raw_key[:VISIBLE_PREFIX_LENGTH]


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
    allowed_networks: list[str] | None = None,
    allowed_user_agents: list[str] | None = None,
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
        allowed_networks=list(allowed_networks or []),
        allowed_user_agents=list(allowed_user_agents or []),
    )
    return IssuedKey(key=key, plaintext=plaintext)


def key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke a key; idempotent (a revoked key keeps its first revocation time)."""
    ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    key.refresh_from_db(fields=["revoked_at"])
    # .update() sends no signal, so invalidate the key caches here.
    transaction.on_commit(key_cache_invalidate)
    return key


@transaction.atomic
def key_rotate(*, key: ApiKey, grace_seconds: int = 86400) -> IssuedKey:
    """Issue a successor of `key` and let `key` expire after `grace_seconds` (at once when 0).

    The successor keeps the key's consumer, name, expiry, allowed routes and client binding
    (networks, User-Agents: a rotation must not unbind a key), and gets
    copies of the key's own budgets and rate limits (the old key keeps its own, which
    limit it for the rest of the grace period). A revoked key cannot be rotated.
    """
    if grace_seconds < 0:
        raise ValueError("grace_seconds must be 0 or more")
    key = ApiKey.objects.select_for_update().select_related("consumer").get(pk=key.pk)
    if key.revoked_at is not None:
        raise ValueError(f"Key {key.prefix}… is revoked; issue a new key instead.")
    issued = key_issue(consumer=key.consumer, name=key.name, expires_at=key.expires_at,
                       allowed_routes=key.allowed_routes, allowed_networks=key.allowed_networks,
                       allowed_user_agents=key.allowed_user_agents)
    for budget in Budget.objects.filter(key=key):
        budget.pk, budget.key = None, issued.key
        budget.save()
    for rate in RateLimit.objects.filter(key=key):
        rate.pk, rate.key = None, issued.key
        rate.save()
    ends = timezone.now() + timedelta(seconds=grace_seconds)
    if key.expires_at is None or key.expires_at > ends:
        key.expires_at = ends
        key.save(update_fields=["expires_at"])  # post_save invalidates the key caches
    return issued


def key_touch(*, key_ids: list[int], when: datetime) -> None:
    """Record last use; called at most once a minute per key, off the request path."""
    ApiKey.objects.filter(pk__in=key_ids).update(last_used_at=when)
