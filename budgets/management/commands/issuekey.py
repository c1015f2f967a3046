"""manage.py issuekey CONSUMER: issue a gateway key and print it, alone, on stdout."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from budgets.binding import networks_problem, user_agents_problem
from budgets.keys import key_issue
from budgets.models import Consumer


class Command(BaseCommand):
    help = (
        "Issue a new gateway key for CONSUMER. The key is the only thing printed on stdout "
        "(so `KEY=$(manage.py issuekey bot)` works); it is shown once and only its digest is stored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("consumer", help="The consumer's name.")
        parser.add_argument("--expires-days", type=int, default=None, help="Expire the key after N days.")
        parser.add_argument("--name", default="", help="A label for the key, e.g. 'ci-runner'.")
        parser.add_argument(
            "--routes", default="", help="Comma-separated route names the key may call (default: every route)."
        )
        parser.add_argument("--networks", default="",
                            help="Comma-separated client networks (CIDRs) the key may be used from (default: any).")
        parser.add_argument("--user-agents", default="",
                            help="Comma-separated User-Agent prefixes the key may be used by, e.g. claude-cli/ "
                            "(default: any).")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            consumer = Consumer.objects.get(name=options["consumer"])
        except Consumer.DoesNotExist:
            raise CommandError(f"No consumer named {options['consumer']!r}.") from None
        days = options["expires_days"]
        if days is not None and days < 1:
            raise CommandError("--expires-days must be at least 1.")
        label = options["name"]
        if len(label) > 100:
            raise CommandError("--name must be at most 100 characters.")
        routes = _split(options["routes"])
        networks, agents = _split(options["networks"]), _split(options["user_agents"])
        problem = networks_problem(networks) or user_agents_problem(agents)
        if problem:
            raise CommandError(problem)

        issued = key_issue(consumer=consumer, name=label, expires_in_days=days, allowed_routes=routes,
                           allowed_networks=networks, allowed_user_agents=agents)

        # stdout carries the key alone, so scripts can capture it; everything else goes to stderr.
        self.stdout.write(issued.plaintext)
        key = issued.key
        details = [f"expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else "never expires"]
        details.append(f"routes: {', '.join(routes)}" if routes else "every route")
        if networks:
            details.append(f"networks: {', '.join(networks)}")
        if agents:
            details.append(f"user agents: {', '.join(agents)}")
        self.stderr.write(
            f"Issued key {key.prefix}… for consumer {consumer.name!r} ({'; '.join(details)}). "
            "Store it now: it is not shown again.",
            style_func=self.style.SUCCESS,
        )
        if not consumer.active:
            self.stderr.write(
                f"Warning: consumer {consumer.name!r} is inactive; its keys are refused until it is activated.",
                style_func=self.style.WARNING,
            )


def _split(value: str) -> list[str]:
    return list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
