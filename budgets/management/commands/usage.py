"""`manage.py usage CONSUMER`: each budget's limit, used and remaining in the current period."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from budgets.models import Consumer, format_amount
from budgets.selectors import budget_usage_report


class Command(BaseCommand):
    help = "Print each budget of a consumer (and its keys): limit, used and remaining this period."

    def add_arguments(self, parser) -> None:
        parser.add_argument("consumer", help="The consumer's name.")

    def handle(self, *args, consumer: str, **options) -> None:
        found = Consumer.objects.filter(name=consumer).first()
        if found is None:
            raise CommandError(f"No consumer named {consumer!r}.")
        rows = budget_usage_report(consumer=found)
        if not rows:
            self.stdout.write(f"{found.name} has no budgets.")
            return
        header = ("owner", "metric", "mode", "period", "limit", "used", "reserved", "remaining", "resets at")
        table = [header]
        for row in rows:
            table.append((
                row.owner, row.metric, row.mode, f"{row.period} from {row.period_start} ({row.timezone})",
                format_amount(row.metric, row.limit), format_amount(row.metric, row.used),
                format_amount(row.metric, row.reserved), format_amount(row.metric, row.remaining),
                row.resets_at.isoformat(),
            ))
        widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
        for line in table:
            self.stdout.write("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
