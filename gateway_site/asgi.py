"""ASGI entry point: gunicorn -k gateway_site.workers.TollgateWorker gateway_site.asgi:application

Proxy and health paths go to a Django handler without middleware: none of the
admin's middleware (sessions, CSRF, messages) applies to them, and each sync
middleware would cost a thread hop per request under ASGI. Everything else (the
admin, the admin API) goes through the full stack.

Before either, a request whose headers add up to more than TOLLGATE_MAX_HEADER_BYTES
is refused with a 431: uvicorn (httptools) sets no limit of its own.

On the proxy paths the body is read only after the key in the headers is accepted, by
proxy.auth.authenticate, the function the views authenticate with (a per-worker cache hit
for a known key). A request without a valid key never has its body read: it reaches its view
without one, and the view's own watched authentication answers, counts and records the 401.
A body is read into memory, counted as it arrives: past TOLLGATE_MAX_BODY_BYTES, or after
TOLLGATE_BODY_READ_TIMEOUT_SECONDS, reading stops, the view is told (proxy.parsing.BODY_REFUSED:
a 413 or 408 in the caller's shape, recorded like any refusal) and the connection is closed
after the answer, so the unread rest is never read.
"""
from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway_site.settings")

import django

django.setup(set_prefix=False)

import asyncio  # noqa: E402
import io  # noqa: E402
import logging  # noqa: E402
from collections.abc import AsyncGenerator  # noqa: E402
from contextlib import aclosing  # noqa: E402

import orjson  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler  # noqa: E402
from django.http import HttpResponseBase, JsonResponse  # noqa: E402
from django.urls import Resolver404, ResolverMatch, resolve  # noqa: E402

from budgets.selectors import KeyInfo  # noqa: E402
from gateway_site.lib.asgibody import TOO_LARGE, body_expected, read_body_within  # noqa: E402
from gateway_site.lib.asgirequest import LeanRequest  # noqa: E402
from gateway_site.status import heartbeat_loop, heartbeat_remove  # noqa: E402
from proxy import tracing  # noqa: E402
from proxy.auth import authenticate  # noqa: E402
from proxy.errors import Caller, GatewayError  # noqa: E402
from proxy.parsing import BODY_REFUSED  # noqa: E402
from proxy.pipeline import KEY_ACCEPTED  # noqa: E402
from proxy.upstream import close_clients  # noqa: E402

logger = logging.getLogger("tollgate.asgi")

# The proxy's routes (proxy/urls.py, included by gateway_site/urls.py) and the probes.
LEAN_PATH_PREFIXES = ("/v1/", "/v1beta/", "/healthz", "/readyz", "/metrics")
# The paths whose callers need a key: a body is read only once the key is accepted.
KEYED_PATH_PREFIXES = ("/v1/", "/v1beta/")


class LeanASGIHandler(ASGIHandler):
    """Django's ASGI handler for the proxy paths, without what they do not need.

    Django's own handler opens a thread pool per request (ThreadSensitiveContext),
    sends request_started/finished signals through a thread, and logs every 4xx
    through another: together the largest cost of a proxied request (profiled,
    see docs/performance.md). Here the URL is resolved and the async view called
    directly; database calls on these paths go through gateway_site.lib.db.run_db,
    which manages connections itself. Client disconnects still cancel the view,
    as in Django's handler.

    On the keyed paths the request is a LeanRequest (gateway_site/lib/asgirequest.py)
    rather than Django's ASGIRequest, the key accepted before the body is read is handed
    to the view (proxy.pipeline.KEY_ACCEPTED) instead of being looked up again, and the
    answer is sent with one message per part (send_lean).
    """

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[object] = []
        self._template_response_middleware: list[object] = []
        self._exception_middleware: list[object] = []
        self._middleware_chain = None

    async def __call__(self, scope, receive, send) -> None:
        if scope["path"].startswith(KEYED_PATH_PREFIXES):
            await self._serve_keyed(scope, receive, send)
            return
        # The probes and /metrics: Django's request, no body to speak of.
        request, error_response = self.create_request(scope, io.BytesIO())
        if request is None:
            assert error_response is not None  # create_request gives a request or the error's response
            await self.send_response(error_response, send)
            return
        await send_lean(await self._respond(request), send)

    async def _serve_keyed(self, scope, receive, send) -> None:
        request = LeanRequest(scope)
        try:
            consumed, left_over = await self._take_body(request, scope, receive)
        except RequestAborted:
            return
        if not consumed:
            # No disconnect listener: it would read the body. What is left of it stays unread:
            # `connection: close` has uvicorn close the connection rather than drain it.
            try:
                await send_lean(await self._respond(request), _closing(send) if left_over else send)
            except asyncio.CancelledError:
                pass
            return
        # The body is read: what receive() gives next is the client's disconnect, which cancels the
        # view (and with it the upstream call), as Django's handler does, from one watcher task.
        task = asyncio.current_task()
        assert task is not None
        watcher = asyncio.create_task(_cancel_on_disconnect(receive, task))
        try:
            await send_lean(await self._respond(request), send)
        except asyncio.CancelledError:
            if not watcher.done():
                raise  # not the client: the server is stopping
            task.uncancel()
        finally:
            watcher.cancel()

    async def _take_body(self, request: LeanRequest, scope, receive) -> tuple[bool, bool]:
        """Read the body into the request, if it may be read: (read to its end, any of it left)."""
        pending, declared = body_expected(scope["headers"])
        accepted, key = await _key_check(request)
        if not accepted:
            return False, pending
        if key is not None:
            request.META[KEY_ACCEPTED] = key
        limit = settings.TOLLGATE_MAX_BODY_BYTES
        refusal: str | None
        if declared is not None and declared > limit:
            refusal = TOO_LARGE  # declared too large: not a byte of it is read
        else:
            request._body, refusal = await read_body_within(
                receive, limit=limit, seconds=settings.TOLLGATE_BODY_READ_TIMEOUT_SECONDS)
        if refusal is None:
            return True, False
        # The view refuses it in the caller's shape (proxy.parsing.read_json_object) and records it.
        request.META[BODY_REFUSED] = refusal
        return False, True

    async def _respond(self, request) -> HttpResponseBase:
        try:
            match = _resolve(request.path_info)
            request.resolver_match = match
            return await match.func(request, *match.args, **match.kwargs)
        except Resolver404:
            error = GatewayError("not_found", "Not found.", code="unknown_endpoint")
        except Exception:
            logger.exception("unhandled error on %s", request.path)
            error = GatewayError("internal", "The gateway failed to handle this request.", code="internal_error")
        # Gemini's callers (/v1beta) read Google's error shape; everyone else OpenAI's.
        caller = Caller.GEMINI if request.path.startswith("/v1beta/") else Caller.OPENAI
        return JsonResponse(error.body(caller), status=error.status)


# path -> its ResolverMatch: the proxy has a handful of paths (Gemini's name the model), and
# Django's resolver tries its patterns one by one on every call.
_resolved: dict[str, ResolverMatch] = {}
_RESOLVED_MAX = 1024


def _resolve(path: str) -> ResolverMatch:
    match = _resolved.get(path)
    if match is None:
        match = resolve(path)
        if len(_resolved) >= _RESOLVED_MAX:
            _resolved.clear()
        _resolved[path] = match
    return match


async def _cancel_on_disconnect(receive, task: asyncio.Task) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            task.cancel()
            return


async def send_lean(response: HttpResponseBase, send) -> None:
    """Send a response over ASGI: its headers, then its content in one message, or a stream's
    parts as they come (Django's send_response cuts content into 64 KiB messages and passes a
    stream's parts through two more generators)."""
    headers = [(name.encode("ascii"), value.encode("latin1")) for name, value in response.items()]
    for cookie in response.cookies.values():
        headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    if not response.streaming:
        await send({"type": "http.response.body", "body": response.content})  # type: ignore[attr-defined]
        return
    # StreamingHttpResponse: an async iterator of bytes (the proxy's streams), through aclosing as
    # Django does, so the relay's `finally` (closing the upstream response) runs now, not at GC.
    stream: AsyncGenerator[bytes, None] = aiter(response)  # type: ignore[arg-type]
    async with aclosing(stream) as parts:
        async for part in parts:
            if part:
                await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body"})


async def _key_check(request) -> tuple[bool, KeyInfo | None]:
    """(whether the body may be read, the accepted key): the views' own authentication, without its
    counting. A key that could not be checked lets the body be read, and the view decides."""
    try:
        return True, await authenticate(request)
    except GatewayError:
        return False, None
    except Exception:
        # The key store is unreachable: read the body as before; the view's authentication decides.
        logger.warning("could not check the key before reading the body", exc_info=True)
    return True, None


def _closing(send):
    """`send`, with `connection: close` on the response: uvicorn then closes the connection after
    the answer instead of reading (and discarding) the rest of the request's body."""
    async def closing_send(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await send(message)

    return closing_send


django_application = ASGIHandler()
django_application.load_middleware(is_async=True)
lean_application = LeanASGIHandler()


async def _lifespan(receive, send) -> None:
    heartbeat: asyncio.Task | None = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            # This worker's heartbeat for the admin's health page (gateway_site/status.py).
            heartbeat = asyncio.create_task(heartbeat_loop())
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if heartbeat is not None:
                heartbeat.cancel()
                try:
                    await asyncio.to_thread(heartbeat_remove)
                except Exception:
                    logger.warning("could not remove this worker's heartbeat", exc_info=True)
            await close_clients()
            if tracing.ENABLED:
                await asyncio.to_thread(tracing.shutdown)  # the spans still queued
            # The last half second of settled budget usage, for the database copy
            # (gunicorn stops workers by signal, so atexit hooks never run).
            from budgets.usage import usage_mirror

            try:
                await asyncio.to_thread(usage_mirror.flush)
            except Exception:
                logger.warning("could not write the last budget usage to the database", exc_info=True)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _refuse_headers(scope, send, size: int, limit: int) -> None:
    """431 in the caller's error shape, sent before the body is read or a request is built."""
    path = scope["path"]
    anthropic = path.startswith("/v1/messages") or (
        not path.startswith("/v1/chat/") and any(name == b"anthropic-version" for name, _ in scope["headers"]))
    error = GatewayError("headers_too_large",
                         f"The request's headers add up to {size} bytes; the gateway accepts at most {limit}.",
                         code="request_headers_too_large")
    caller = Caller.GEMINI if path.startswith("/v1beta/") else Caller.ANTHROPIC if anthropic else Caller.OPENAI
    body = orjson.dumps(error.body(caller))
    # The unread body is discarded by the server; the connection stays usable.
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def application(scope, receive, send) -> None:
    scope_type = scope["type"]
    if scope_type == "http":
        # One sum per request (names and values, as the server received them): cheap enough for
        # the hot path, and it keeps megabytes of headers out of Django's request objects.
        size = sum(len(name) + len(value) for name, value in scope["headers"])
        limit = settings.TOLLGATE_MAX_HEADER_BYTES
        if size > limit:
            await _refuse_headers(scope, send, size, limit)
        elif scope["path"].startswith(LEAN_PATH_PREFIXES):
            await lean_application(scope, receive, send)
        else:
            await django_application(scope, receive, send)
    elif scope_type == "lifespan":
        await _lifespan(receive, send)
    else:
        await django_application(scope, receive, send)
