"""manage.py drf_create_token USER [-r]: DRF's command, kept for scripts written against it.

rest_framework.authtoken is no longer installed (its tokens were plaintext); this prints the
same line, `Generated token <token> for user <user>`, for a hashed, expiring token. Prefer api_token.
"""
from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway_site.auth_tokens import token_issue, token_revoke
from gateway_site.models import ApiToken


class Command(BaseCommand):
    help = "Issue an admin API token for USER (as manage.py api_token does); -r revokes USER's other tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("-r", "--reset", action="store_true", help="Revoke USER's other tokens.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(**{get_user_model().USERNAME_FIELD: options["username"]}).first()
        if user is None:
            raise CommandError(f"no user {options['username']!r}")
        if options["reset"]:
            for token in ApiToken.objects.filter(user=user, revoked_at__isnull=True):
                token_revoke(token=token)
        self.stdout.write(f"Generated token {token_issue(user=user).plaintext} for user {user.get_username()}")
