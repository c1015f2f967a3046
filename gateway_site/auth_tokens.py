"""Admin API tokens: their format, and issuing, rotating, revoking and checking them.

A token is `tgadm_` followed by 43 URL-safe characters (256 random bits). Only its SHA-256
digest and a visible prefix are kept; the plaintext exists once, in IssuedToken. The admin,
the management commands and the DRF authentication class all go through here.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from gateway_site.models import ApiToken

TOKEN_PREFIX = "tgadm_"
VISIBLE_PREFIX_LENGTH = 12  # "tgadm_" and 6 random characters: enough to tell tokens apart
# A token in use is written at most this often: one UPDATE a minute, not one per API call.
TOUCH_SECONDS = 60


def token_digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    """A newly issued token. `plaintext` exists only here: it is never stored."""

    token: ApiToken
    plaintext: str


def token_issue(*, user, name: str = "", days: int | None = None) -> IssuedToken:
    """A new token for `user`, valid for `days` (TOLLGATE_API_TOKEN_DAYS when None)."""
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = timezone.now()
    token = ApiToken.objects.create(
        user=user, name=name, prefix=plaintext[:VISIBLE_PREFIX_LENGTH], digest=token_digest(plaintext),
        created_at=now, expires_at=now + timedelta(days=days or settings.TOLLGATE_API_TOKEN_DAYS),
    )
    return IssuedToken(token=token, plaintext=plaintext)


def token_revoke(*, token: ApiToken) -> ApiToken:
    """Revoke a token now; idempotent (a revoked token keeps its first revocation time)."""
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
    token.refresh_from_db(fields=["revoked_at"])
    return token


@transaction.atomic
def token_rotate(*, token: ApiToken, days: int | None = None) -> IssuedToken:
    """A successor of `token` (same user and name, a fresh expiry); `token` stops working at once."""
    token_revoke(token=token)
    return token_issue(user=token.user, name=token.name, days=days)


class TokenRefused(Exception):
    """The token is unknown, revoked or expired, or its user may not sign in; the message says which."""


def token_check(plaintext: str) -> ApiToken:
    """The active token with this plaintext, its user loaded and its last use noted; TokenRefused otherwise."""
    token = ApiToken.objects.select_related("user").filter(digest=token_digest(plaintext)).first()
    if token is None:
        raise TokenRefused("Invalid token.")
    now = timezone.now()
    if token.revoked_at is not None:
        raise TokenRefused("Invalid token.")  # as for an unknown one: a revoked token says nothing about itself
    if token.expires_at <= now:
        raise TokenRefused("Token has expired; ask an admin for a new one.")
    if not token.user.is_active:
        raise TokenRefused("User inactive or deleted.")
    stale = now - timedelta(seconds=TOUCH_SECONDS)
    if token.last_used_at is None or token.last_used_at < stale:
        # Conditional: of concurrent requests with one token, one writes.
        ApiToken.objects.filter(Q(last_used_at__isnull=True) | Q(last_used_at__lt=stale), pk=token.pk).update(
            last_used_at=now)
        token.last_used_at = now
    return token
