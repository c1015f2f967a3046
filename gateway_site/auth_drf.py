"""DRF authentication by admin API token (`Authorization: Token <token>`), checked by digest.

A module of its own that imports no model at import time: DRF imports the authentication
classes named in REST_FRAMEWORK when rest_framework.views is first imported, which may be
before the app registry is ready.
"""
from __future__ import annotations

from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed


class ApiTokenAuthentication(TokenAuthentication):
    """The same header, keyword and 401 answer as DRF's TokenAuthentication; tokens are gateway_site.ApiToken."""

    keyword = "Token"

    def authenticate_credentials(self, key: str):
        from gateway_site.auth_tokens import TokenRefused, token_check

        try:
            token = token_check(key)
        except TokenRefused as exc:
            raise AuthenticationFailed(str(exc)) from None
        return token.user, token


class AdminSessionAuthentication(SessionAuthentication):
    """An admin session (the browsable API), under the admin site's own rule: with TOTP required,
    a superuser's session counts only once verified (gateway_site.auth_login.otp_session_ok)."""

    def authenticate(self, request):
        from gateway_site.auth_login import otp_session_ok

        result = super().authenticate(request)
        if result is not None and not otp_session_ok(request._request):
            return None
        return result
