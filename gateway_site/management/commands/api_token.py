"""manage.py api_token USER: issue an admin API token and print it (only its digest is kept)."""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway_site.auth_tokens import token_issue, token_revoke
from gateway_site.models import ApiToken


class Command(BaseCommand):
    help = ("Issue an admin API token for USER and print it, alone on a line: it is shown this once. "
            "Sent as `Authorization: Token <token>`.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="A label, e.g. 'deploy script'.")
        parser.add_argument("--days", type=int, default=None,
                            help="Days until it expires (default TOLLGATE_API_TOKEN_DAYS).")
        parser.add_argument("--revoke-others", action="store_true", help="Revoke USER's other tokens.")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["days"] is not None and options["days"] < 1:
            raise CommandError("--days must be at least 1")
        try:
            user = get_user_model().objects.get_by_natural_key(options["username"])
        except get_user_model().DoesNotExist:
            raise CommandError(f"no user {options['username']!r}") from None
        if options["revoke_others"]:
            for token in ApiToken.objects.filter(user=user, revoked_at__isnull=True):
                token_revoke(token=token)
        issued = token_issue(user=user, name=options["name"], days=options["days"])
        self.stdout.write(issued.plaintext)
