"""Tollgate's admin site: Django's, with a sign-in form that asks for a TOTP code where needed
and a login page that offers single sign-on (TollgateAdminConfig makes it `admin.site`)."""
from __future__ import annotations

from urllib.parse import urlencode

from django import forms
from django.conf import settings
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.signals import user_login_failed
from django.http import HttpRequest
from django.urls import reverse

from gateway_site.auth_login import SSO_SESSION_KEY, otp_asked, otp_devices, otp_session_ok


class TollgateLoginForm(AdminAuthenticationForm):
    """The admin's user name and password, and a TOTP code when the user has (or must have) a device."""

    otp_token = forms.CharField(
        label="Authenticator code", required=False, max_length=16, strip=True,
        widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}),
        help_text="From your authenticator app, if you have set one up.")

    error_messages = {
        **AdminAuthenticationForm.error_messages,
        "otp_no_device": "A superuser needs a confirmed authenticator (TOTP) device to sign in here. "
                         "Ask another superuser to add one for you (OTP_TOTP → TOTP devices).",
        "otp_required": "Enter the code from your authenticator app.",
        "otp_invalid": "That authenticator code is not right, or was used already.",
    }

    def clean(self):
        cleaned = super().clean()  # the password (django-axes first), then is_staff
        user = self.get_user()
        if user is not None and otp_asked(user):
            self._check_otp(user, (cleaned.get("otp_token") or "").replace(" ", ""))
        if self.request is not None:
            # A password sign-in is not a single sign-on, whatever this session was before.
            self.request.session.pop(SSO_SESSION_KEY, None)
        return cleaned

    def _check_otp(self, user, code: str) -> None:
        devices = otp_devices(user)
        if not devices:
            raise forms.ValidationError(self.error_messages["otp_no_device"], code="otp_no_device")
        if not code:
            raise forms.ValidationError(self.error_messages["otp_required"], code="otp_required")
        for device in devices:
            allowed, _ = device.verify_is_allowed()  # django-otp's own back-off after wrong codes
            if allowed and device.verify_token(code):
                # django-otp's user_logged_in receiver keeps the device in the session: is_verified().
                user.otp_device = device
                return
        # A wrong code counts as a failed sign-in for the lockout, as a wrong password does.
        user_login_failed.send(sender=__name__, credentials={"username": user.get_username()},
                               request=self.request)
        raise forms.ValidationError(self.error_messages["otp_invalid"], code="otp_invalid")


class TollgateAdminSite(admin.AdminSite):
    login_form = TollgateLoginForm
    login_template = "admin/tollgate_login.html"

    def has_permission(self, request: HttpRequest) -> bool:
        return super().has_permission(request) and otp_session_ok(request)

    def login(self, request: HttpRequest, extra_context=None):
        next_url = request.GET.get("next") or request.POST.get("next") or "/admin/"
        context = {
            "password_login": settings.TOLLGATE_ADMIN_PASSWORD_LOGIN,
            "otp_mode": settings.TOLLGATE_ADMIN_OTP,
            "sso_name": settings.TOLLGATE_OIDC_PROVIDER_NAME if settings.TOLLGATE_OIDC_ENABLED else "",
            "sso_url": reverse("oidc_authentication_init") + "?" + urlencode({"next": next_url}),
            "sso_failed": request.GET.get("sso") == "failed",
            **(extra_context or {}),
        }
        return super().login(request, context)
