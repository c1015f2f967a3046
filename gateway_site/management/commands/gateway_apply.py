"""manage.py gateway_apply FILE.yaml [--dry-run] [--prune]: make the database match the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from gateway_site.lib.configfile import ConfigError, config_apply


class Command(BaseCommand):
    help = (
        "Create or update providers, routes and consumers from a YAML file, in one transaction. "
        "Applying the same file again changes nothing. Items not in the file are left alone "
        "unless --prune is given."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", help="The YAML configuration file (docs/configuration-as-code.md).")
        parser.add_argument("--dry-run", action="store_true", help="Print the changes; write nothing.")
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Also delete providers, routes and consumers missing from the sections the file lists.",
        )
        parser.add_argument(
            "--allow-credentials",
            action="store_true",
            help="Allow creating providers and changing their base_url, api_key_env or api_key_file (which "
            "secret is read and where it is sent); without it such changes are refused. Each one is logged "
            "(docs/providers.md#credentials).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        filename = options["file"]
        try:
            text = Path(filename).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"{filename}: cannot read the file: {exc}") from None
        try:
            plan = config_apply(text=text, filename=filename, dry_run=options["dry_run"], prune=options["prune"],
                                options={"allow_credentials": options["allow_credentials"]})
        except ConfigError as exc:
            raise CommandError(f"{exc}\nNothing was written.") from None
        except DatabaseError as exc:
            raise CommandError(f"{filename}: the database refused the changes: {exc}\nNothing was written.") from None

        for change in plan.changes:
            self.stdout.write(str(change))
        if plan.left_alone:
            self.stdout.write(
                f"Not in the file, left alone (--prune deletes them): {', '.join(plan.left_alone)}"
            )
        count = len(plan.changes)
        if not count:
            self.stdout.write("No changes.")
        elif options["dry_run"]:
            self.stdout.write(f"Dry run: {count} change{'s' if count != 1 else ''}, nothing written.")
        else:
            self.stdout.write(f"Applied {count} change{'s' if count != 1 else ''}.")
