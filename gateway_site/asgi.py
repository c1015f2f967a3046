"""ASGI entry point: gunicorn -k uvicorn_worker.UvicornWorker gateway_site.asgi:application

Proxy and health paths go to a Django handler without middleware: none of the
admin's middleware (sessions, CSRF, messages) applies to them, and each sync
middleware would cost a thread hop per request under ASGI. Everything else (the
admin, the admin API) goes through the full stack.
"""
from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

import django

django.setup(set_prefix=False)

from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402

from proxy.upstream import close_clients  # noqa: E402

LEAN_PATH_PREFIXES = ("/v1/", "/healthz", "/readyz")


class LeanASGIHandler(ASGIHandler):
    """Django's ASGI handler with an empty middleware chain."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)


django_application = ASGIHandler()
django_application.load_middleware(is_async=True)
lean_application = LeanASGIHandler()
lean_application.load_middleware(is_async=True)


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await close_clients()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope, receive, send) -> None:
    scope_type = scope["type"]
    if scope_type == "http" and scope["path"].startswith(LEAN_PATH_PREFIXES):
        await lean_application(scope, receive, send)
    elif scope_type == "lifespan":
        await _lifespan(receive, send)
    else:
        await django_application(scope, receive, send)
