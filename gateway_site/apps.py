"""The roof as an app: its management commands (gateway_apply, gateway_export, quickstart act on
every app) and the Celery app, loaded when Django starts so that shared tasks queue on it.

The Celery import lives here rather than in gateway_site/__init__.py, as Celery's Django guide
allows: importing the ground floor (gateway_site.lib) must not pull in the roof.
"""
from __future__ import annotations

from django.apps import AppConfig


class GatewaySiteConfig(AppConfig):
    name = "gateway_site"
    verbose_name = "Tollgate"

    def ready(self) -> None:
        from gateway_site.celery import app  # noqa: F401 -- makes it the current app for shared tasks
