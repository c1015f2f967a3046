"""Reads of consumers and keys used on the request path."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from budgets.models import ApiKey


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the gateway needs to know about a key, cached per worker."""

    key_id: int
    prefix: str
    consumer_id: int
    consumer_name: str
    consumer_active: bool
    expires_at: datetime | None
    revoked: bool
    allowed_routes: frozenset[str] | None  # None: every route


async def key_info_by_digest(digest: str) -> KeyInfo | None:
    key = await ApiKey.objects.select_related("consumer").filter(digest=digest).afirst()
    if key is None:
        return None
    return KeyInfo(
        key_id=key.pk,
        prefix=key.prefix,
        consumer_id=key.consumer_id,
        consumer_name=key.consumer.name,
        consumer_active=key.consumer.active,
        expires_at=key.expires_at,
        revoked=key.revoked_at is not None,
        allowed_routes=frozenset(key.allowed_routes) if key.allowed_routes else None,
    )
