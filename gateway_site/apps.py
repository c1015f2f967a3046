"""The roof as an app: its management commands (gateway_apply, gateway_export, quickstart act on
every app) and the Celery app, loaded when Django starts so that shared tasks queue on it.

The Celery import lives here rather than in gateway_site/__init__.py, as Celery's Django guide
allows: importing the ground floor (gateway_site.lib) must not pull in the roof.
"""
from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class GatewaySiteConfig(AppConfig):
    name = "gateway_site"
    verbose_name = "Tollgate"

    def ready(self) -> None:
        from gateway_site.celery import app  # noqa: F401 -- makes it the current app for shared tasks


class TollgateAdminConfig(admin_apps.AdminConfig):
    """Django's admin, whose default site is Tollgate's: its sign-in asks for a TOTP code where
    TOLLGATE_ADMIN_OTP says so and offers single sign-on (gateway_site/auth_admin.py)."""

    default = False  # named in INSTALLED_APPS in place of django.contrib.admin; GatewaySiteConfig is this app's
    default_site = "gateway_site.auth_admin.TollgateAdminSite"
