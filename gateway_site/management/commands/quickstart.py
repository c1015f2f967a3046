"""Try Tollgate on a laptop: migrate, seed a demo, start the sandbox provider and the gateway."""
from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from budgets.keys import key_issue
from budgets.models import Consumer
from proxy.models import Deployment, ModelRoute, Provider, ProviderKind

DEMO_ROUTES = {
    # route name clients send -> model name at the sandbox
    "demo": "sandbox-model",
    "gpt-4o-mini": "gpt-4o-mini",
}
# The model names coding agents send when nobody told them another, so each works out of the box
# against the quickstart (docs/providers.md shows the same routes for real providers).
AGENT_ROUTES = (
    # Claude Code 2.1: its default, and its small/fast helper model (as given, and as sent first-party).
    "claude-opus-4-8", "claude-haiku-4-5", "claude-haiku-4-5-20251001",
    # Codex CLI 0.169's default.
    "gpt-5-codex",
    # Gemini CLI 0.61: its default, its router's classifier (flash-lite) and its flash model; and the
    # Gemini 2.5 family it falls back to (its "auto-gemini-2.5" setting).
    "gemini-3.8-flash", "gemini-3.5-flash-lite", "gemini-3.5-flash",
    "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite",
)


class Command(BaseCommand):
    help = "Set up a demo on the embedded database and serve the gateway with the built-in sandbox provider."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--sandbox-port", type=int, default=8787)
        parser.add_argument("--no-serve", action="store_true", help="Only set up the demo, start nothing.")

    def handle(self, *args, host: str, port: int, sandbox_port: int, no_serve: bool, **options) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        password, key = self._seed(sandbox_port)
        base = f"http://{host}:{port}"
        self.stdout.write(self._banner(base, password, key))
        self.stdout.flush()
        if no_serve:
            return
        sandbox = self._start_sandbox(sandbox_port)
        # uvicorn stops on SIGTERM, then raises it again once its own handler is gone; without a
        # handler here that would end the process before `finally` stops the sandbox.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        try:
            import uvicorn

            uvicorn.run("gateway_site.asgi:application", host=host, port=port, log_level="info",
                        lifespan="on")
        finally:
            sandbox.terminate()
            sandbox.wait(timeout=10)

    @transaction.atomic
    def _seed(self, sandbox_port: int) -> tuple[str, str]:
        user_model = get_user_model()
        password = secrets.token_urlsafe(12)
        admin, _ = user_model.objects.get_or_create(
            username="admin", defaults={"email": "admin@localhost", "is_staff": True, "is_superuser": True}
        )
        admin.is_staff = admin.is_superuser = admin.is_active = True
        admin.set_password(password)
        admin.save()

        provider, _ = Provider.objects.update_or_create(
            name="sandbox",
            defaults={"kind": ProviderKind.SANDBOX, "base_url": f"http://127.0.0.1:{sandbox_port}/v1",
                      "enabled": True},
        )
        routes = {**DEMO_ROUTES, **{name: name for name in AGENT_ROUTES}}
        for route_name, upstream_model in routes.items():
            description = "Quickstart demo (sandbox)" if route_name in DEMO_ROUTES else \
                "A coding agent's default model name, served by the sandbox (quickstart)"
            route, _ = ModelRoute.objects.update_or_create(
                model=route_name, defaults={"description": description, "enabled": True}
            )
            Deployment.objects.update_or_create(
                route=route, provider=provider, upstream_model=upstream_model,
                defaults={"weight": 1, "priority": 0, "enabled": True},
            )
        consumer, _ = Consumer.objects.get_or_create(
            name="demo", defaults={"description": "Quickstart demo consumer"}
        )
        issued = key_issue(consumer=consumer, name="quickstart")
        return password, issued.plaintext

    def _start_sandbox(self, port: int) -> subprocess.Popen:
        manage = Path(settings.BASE_DIR) / "manage.py"
        process = subprocess.Popen(
            [sys.executable, str(manage), "sandbox_provider", "--host", "127.0.0.1", "--port", str(port)]
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise CommandError(f"The sandbox provider exited (is port {port} free? try --sandbox-port).")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_sandbox/health", timeout=1).status_code == 200:
                    return process
            except httpx.HTTPError:
                time.sleep(0.2)
        process.terminate()
        raise CommandError("The sandbox provider did not start within 20 seconds.")

    def _banner(self, base: str, password: str, key: str) -> str:
        return f"""
Tollgate is starting on {base}  (embedded SQLite, sandbox provider, no real API key needed)

  Admin:     {base}/admin/   user: admin   password: {password}
  Gateway key for consumer 'demo' (shown once):
             {key}

Try it with curl:

  curl {base}/v1/chat/completions \\
    -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "demo", "messages": [{{"role": "user", "content": "Hello, gateway!"}}]}}'

Or with the openai Python SDK (pip install openai):

  python3 -c '
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{key}")
reply = client.chat.completions.create(model="demo", messages=[{{"role": "user", "content": "Hello!"}}])
print(reply.choices[0].message.content)
'

Press Ctrl-C to stop.
"""
