"""Single sign-on to the admin with OpenID Connect (mozilla-django-oidc), off unless configured.

People are matched by e-mail address (the library's rule; new ones get it as user name). On
every sign-in the identity provider's groups claim decides the two Django groups: names in
TOLLGATE_OIDC_ADMIN_GROUPS give `gateway-admin`, in TOLLGATE_OIDC_COMPLIANCE_GROUPS
`compliance`; either makes the user staff, none refuses the sign-in (and removes both). Single
sign-on makes a superuser only through TOLLGATE_OIDC_SUPERUSER_GROUPS; without it, it refuses
to sign in a superuser at all, so a superuser's powers never rest on the identity provider alone.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import httpx
import requests
from django.conf import settings
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation
from django.db import transaction
from django.http import Http404
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from audit.permissions import COMPLIANCE, GATEWAY_ADMIN
from gateway_site.auth_login import SSO_SESSION_KEY

logger = logging.getLogger("tollgate.security")

# The library's setting names, and the discovery document's names for the same endpoints.
_DISCOVERED = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
}
_DISCOVERY_SECONDS = 3600
_discovery: dict[str, tuple[float, dict]] = {}


def discovery(issuer: str) -> dict:
    """The issuer's /.well-known/openid-configuration, kept for an hour per process."""
    cached = _discovery.get(issuer)
    if cached and time.monotonic() - cached[0] < _DISCOVERY_SECONDS:
        return cached[1]
    response = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=settings.OIDC_TIMEOUT)
    response.raise_for_status()
    document = response.json()
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        # OpenID Connect Discovery 1.0, section 4.3: the document must name the issuer asked.
        raise ImproperlyConfigured(f"the discovery document of {issuer} names issuer {document.get('issuer')!r}")
    _discovery[issuer] = (time.monotonic(), document)
    return document


def oidc_setting(attr: str, *default):
    """A setting of the library; an endpoint left empty comes from the issuer's discovery document."""
    value = import_from_settings(attr, *default)
    if attr in _DISCOVERED and not value and settings.TOLLGATE_OIDC_ENABLED and settings.TOLLGATE_OIDC_ISSUER:
        value = discovery(settings.TOLLGATE_OIDC_ISSUER).get(_DISCOVERED[attr]) or value
    return value


def oidc_username(email: str, claims: dict | None = None) -> str:
    """OIDC_USERNAME_ALGO: the address itself, readable in the admin history (unique: users are matched by it)."""
    return email.lower()[:150]


def _claimed_groups(claims: dict) -> set[str]:
    value = claims.get(settings.TOLLGATE_OIDC_GROUPS_CLAIM) or []
    if isinstance(value, str):
        value = [value]
    return {str(group) for group in value} if isinstance(value, Iterable) else set()


class OIDCBackend(OIDCAuthenticationBackend):
    """mozilla-django-oidc's backend: endpoints read lazily, groups mapped, superusers guarded."""

    get_settings = staticmethod(oidc_setting)

    def __init__(self, *args, **kwargs) -> None:
        # Django builds every backend for every sign-in, passwords included: the endpoints (and a
        # discovery request) wait until a sign-in by the identity provider actually happens.
        self.UserModel = get_user_model()

    def authenticate(self, request, **kwargs):
        # Only the callback view passes the nonce it kept in the session: a code sent to any other
        # sign-in (the admin's password form with ?code=…&state=…) is not exchanged.
        if request is None or not settings.TOLLGATE_OIDC_ENABLED or not kwargs.get("nonce"):
            return None
        super().__init__()
        try:
            return super().authenticate(request, **kwargs)
        except (SuspiciousOperation, requests.RequestException, httpx.HTTPError) as exc:
            # A refused token or an unreachable provider: back to the login page, not an error page.
            logger.warning("single sign-on failed: %s", exc)
            return None

    def get_user(self, user_id):
        # As ModelBackend: a deactivated user's session ends (the library's get_user skips this check).
        user = super().get_user(user_id)
        return user if user is not None and self.user_can_authenticate(user) else None

    def verify_token(self, token, **kwargs):
        payload = super().verify_token(token, **kwargs)
        # The library leaves the audience (and issuer) unchecked; an id_token is only for this client.
        audience = payload.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if self.OIDC_RP_CLIENT_ID not in audiences:
            raise SuspiciousOperation("id_token audience is not this client")
        issuer = settings.TOLLGATE_OIDC_ISSUER
        if issuer and str(payload.get("iss", "")).rstrip("/") != issuer:
            raise SuspiciousOperation("id_token issuer is not TOLLGATE_OIDC_ISSUER")
        return payload

    def get_userinfo(self, access_token, id_token, payload):
        # The groups may be in the id_token or only in the userinfo answer: both count, userinfo last.
        return {**payload, **super().get_userinfo(access_token, id_token, payload)}

    def verify_claims(self, claims) -> bool:
        if claims.get("email_verified") is False:
            logger.warning("single sign-on refused: the identity provider has not verified %s", claims.get("email"))
            return False
        return bool(claims.get("email"))

    def create_user(self, claims):
        if not any(self._roles(claims)):
            raise SuspiciousOperation(f"{claims.get('email')} is in none of the admin's groups")
        with transaction.atomic():
            return self._apply_roles(super().create_user(claims), claims)

    def update_user(self, user, claims):
        if user.is_superuser and not settings.TOLLGATE_OIDC_SUPERUSER_GROUPS:
            raise SuspiciousOperation(f"{user} is a superuser, and TOLLGATE_OIDC_SUPERUSER_GROUPS is not set")
        with transaction.atomic():
            user = self._apply_roles(user, claims)
        if not user.is_staff:
            # Removed from every group at the identity provider: the demotion is kept, the sign-in refused.
            raise SuspiciousOperation(f"{user} is in none of the admin's groups")
        return user

    def _roles(self, claims: dict) -> tuple[set[str], bool]:
        """The Django groups and the superuser flag that the claims give."""
        claimed = _claimed_groups(claims)
        groups = set()
        if claimed & set(settings.TOLLGATE_OIDC_ADMIN_GROUPS):
            groups.add(GATEWAY_ADMIN)
        if claimed & set(settings.TOLLGATE_OIDC_COMPLIANCE_GROUPS):
            groups.add(COMPLIANCE)
        superuser = bool(claimed & set(settings.TOLLGATE_OIDC_SUPERUSER_GROUPS))
        return groups, superuser

    def _apply_roles(self, user, claims: dict):
        groups, superuser = self._roles(claims)
        old_groups = set(user.groups.filter(name__in=(GATEWAY_ADMIN, COMPLIANCE)).values_list("name", flat=True))
        changed = [label for label, old, new in (
            ("Groups", old_groups, groups),
            ("Staff status", user.is_staff, bool(groups or superuser)),
            ("Superuser status", user.is_superuser, superuser),
        ) if old != new]
        if changed:
            user.is_staff, user.is_superuser = bool(groups or superuser), superuser
            user.save(update_fields=["is_staff", "is_superuser"])
            user.groups.remove(*Group.objects.filter(name__in=old_groups - groups))
            user.groups.add(*Group.objects.filter(name__in=groups - old_groups))
            # The admin history shows what single sign-on changed, as the admin's own user form would.
            LogEntry.objects.log_actions(user_id=user.pk, queryset=[user], action_flag=CHANGE, single_object=True,
                                         change_message=[{"changed": {"fields": changed}}])
            logger.info("single sign-on set %s: groups %s, superuser %s", user, sorted(groups), superuser)
        return user


class SignInView(OIDCAuthenticationRequestView):
    """GET /oidc/authenticate/: on to the identity provider (404 when single sign-on is off)."""

    get_settings = staticmethod(oidc_setting)

    def dispatch(self, request, *args, **kwargs):
        if not settings.TOLLGATE_OIDC_ENABLED:
            raise Http404
        return super().dispatch(request, *args, **kwargs)


class CallbackView(OIDCAuthenticationCallbackView):
    """GET /oidc/callback/: the identity provider's answer; signs in, and notes how in the session."""

    get_settings = staticmethod(oidc_setting)

    def dispatch(self, request, *args, **kwargs):
        if not settings.TOLLGATE_OIDC_ENABLED:
            raise Http404
        return super().dispatch(request, *args, **kwargs)

    def login_success(self):
        response = super().login_success()
        self.request.session[SSO_SESSION_KEY] = "oidc"
        return response
