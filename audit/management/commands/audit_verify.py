"""Check the audit log's hash chain: exit 0 with the count, or non-zero at the first break."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audit.chain import chain_verify
from audit.exports import parse_moment


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; report the first event where it breaks."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--since", help="Start at the first event at or after this ISO date or datetime.")

    def handle(self, *args, since: str | None = None, **options) -> None:
        try:
            start = parse_moment(since) if since else None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        report = chain_verify(since=start)
        if not report.ok:
            where = f" (request {report.request_id})" if report.request_id else ""
            raise CommandError(
                f"Audit chain broken at event {report.broken_seq}{where}: {report.problem}. "
                f"{report.checked} events before it verified.",
                returncode=2,
            )
        self.stdout.write(f"Audit chain intact: {report.checked} events verified.")
