"""manage.py gateway_export: print the configuration in the format gateway_apply reads."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from gateway_site.lib.configfile import config_export


class Command(BaseCommand):
    help = (
        "Print providers, routes and consumers as YAML for gateway_apply. "
        "Credentials and keys are never included."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        self.stdout.write(config_export(), ending="")
