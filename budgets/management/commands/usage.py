"""`manage.py usage CONSUMER` or `usage --team TEAM`: each budget's limit, used and remaining in the current period."""
from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from budgets.models import Consumer, Team, format_amount
from budgets.selectors import budget_usage_report


class Command(BaseCommand):
    help = ("Print each budget that a consumer's requests hold (its own, its keys' and its team's), or a team's "
            "budgets: owner, routes, limit, used and remaining this period.")

    def add_arguments(self, parser) -> None:
        parser.add_argument("consumer", nargs="?", help="The consumer's name.")
        parser.add_argument("--team", help="A team's name: its budgets (instead of a consumer's).")

    def handle(self, *args, consumer: str | None, team: str | None, **options) -> None:
        if (consumer is None) == (team is None):
            raise CommandError("Name a consumer, or a team with --team.")
        if team is not None:
            found_team = Team.objects.filter(name=team).first()
            if found_team is None:
                raise CommandError(f"No team named {team!r}.")
            name, rows = f"Team {found_team.name}", budget_usage_report(team=found_team)
        else:
            found = Consumer.objects.select_related("team").filter(name=consumer).first()
            if found is None:
                raise CommandError(f"No consumer named {consumer!r}.")
            name, rows = found.name, budget_usage_report(consumer=found)
            if found.team is not None:
                self.stdout.write(f"{found.name} is in team {found.team.name}: "
                                  "the team's budgets hold its requests too.")
        if not rows:
            self.stdout.write(f"{name} has no budgets.")
            return
        header = ("owner", "metric", "mode", "period", "routes", "limit", "used", "reserved", "remaining",
                  "resets at")
        table = [header]
        for row in rows:
            table.append((
                row.owner, row.metric, row.mode, f"{row.period} from {row.period_start} ({row.timezone})",
                ", ".join(row.routes) or "all",
                format_amount(row.metric, row.limit), format_amount(row.metric, row.used),
                format_amount(row.metric, row.reserved), format_amount(row.metric, row.remaining),
                row.resets_at.isoformat(),
            ))
        widths = [max(len(str(line[i])) for line in table) for i in range(len(header))]
        for line in table:
            self.stdout.write("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))
