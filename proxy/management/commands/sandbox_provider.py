"""Serve the sandbox provider: a fake OpenAI/Anthropic/Gemini upstream for demos, tests and benchmarks."""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from proxy.sandbox import add_arguments, config_from_options, serve


class Command(BaseCommand):
    help = ("Serve the sandbox provider (OpenAI, Anthropic and Gemini wire formats, deterministic replies, "
            "no API key needed). See docs/sandbox.md.")
    # It touches neither the database nor the models: starting must not wait for system checks.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            config = config_from_options(options)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["verbosity"] >= 1:
            self.stdout.write(f"Sandbox provider on http://{options['host']}:{options['port']} "
                              "(OpenAI /v1/chat/completions, Anthropic /v1/messages, Gemini /v1beta/models/...)")
        serve(config, host=options["host"], port=options["port"], log_level=options["log_level"])
