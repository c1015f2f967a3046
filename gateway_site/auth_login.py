"""Who may finish signing in to the admin: the lockout's client address and the TOTP rule.

The lockout itself is django-axes (settings: AXES_*); it counts failures per (user name,
client address), with the address the rest of the gateway believes (gateway_site.lib.clientaddr).
The second factor is django-otp's TOTP devices, asked for as TOLLGATE_ADMIN_OTP says.
"""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest

from gateway_site.lib.clientaddr import client_address

# Set in the session by the single sign-on callback: the identity provider ran its own checks.
SSO_SESSION_KEY = "tollgate_signed_in_by"


def login_client_address(request: HttpRequest) -> str | None:
    """AXES_CLIENT_IP_CALLABLE: X-Forwarded-For only from TOLLGATE_TRUSTED_PROXIES, else the peer."""
    return client_address(request.META)


def login_by_sso(request: HttpRequest, credentials: dict | None = None) -> bool:
    """AXES_WHITELIST_CALLABLE: the single sign-on callback's attempts are not counted or locked.

    They carry no user name (only the nonce the callback kept), so axes would count them all
    against one name per address: a few people outside the admin groups behind one office
    address would lock everyone's single sign-on there. The identity provider throttles its own.
    """
    return isinstance(credentials, dict) and "nonce" in credentials


def otp_devices(user) -> list:
    """The user's confirmed devices (TOTP, or any other django-otp plugin installed)."""
    from django_otp import devices_for_user

    return list(devices_for_user(user, confirmed=True))


def otp_asked(user) -> bool:
    """Whether a password sign-in of `user` must also give a TOTP code."""
    mode = settings.TOLLGATE_ADMIN_OTP
    if mode == "off":
        return False
    if mode == "required" and user.is_superuser:
        return True
    return bool(otp_devices(user))


def otp_session_ok(request: HttpRequest) -> bool:
    """With TOTP required, a superuser's session counts only once verified (or signed in by SSO).

    Checked on every admin page, so a session opened before the rule was switched on, or by
    another path than the login form, does not carry superuser powers past it.
    """
    user = request.user
    if settings.TOLLGATE_ADMIN_OTP != "required" or not user.is_superuser:
        return True
    if request.session.get(SSO_SESSION_KEY) == "oidc":
        return True
    is_verified = getattr(user, "is_verified", None)
    return bool(is_verified and is_verified())
