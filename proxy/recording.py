"""The recording half of step 8: hand the finished request to the audit log (DESIGN §1, §4).

`record(ctx)` returns once the request's audit event is committed; callers run
it before the answer (or the end of a stream) is released, so a client that saw
an answer has its event even if the worker dies right after.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from audit.models import BodyMode
from audit.services import AuditRecord
from audit.writer import event_write
from proxy.context import RequestContext
from proxy.errors import Caller, GatewayError

logger = logging.getLogger(__name__)

# Room beyond the stored size, so redaction sees a secret that straddles the cut whole.
_CAPTURE_MARGIN = 1024


async def capture_bodies(ctx: RequestContext, body: dict[str, Any]) -> None:
    """After parsing: keep what the consumer's audit policy asks for (call once ctx.key is known)."""
    model = body.get("model")
    if isinstance(model, str):
        ctx.requested_model = model
    mode = ctx.audit_body_mode
    if mode == BodyMode.FULL:
        ctx.capture_limit = settings.TOLLGATE_AUDIT_BODY_MAX_CHARS + _CAPTURE_MARGIN
    if mode != BodyMode.NONE:
        ctx.request_body = body


def _cost_micros(ctx: RequestContext) -> int:
    """Cost as budgets (issue #4) priced it; 0 when no price is known."""
    cost = getattr(ctx, "cost_microusd", None)
    if isinstance(cost, int) and not isinstance(cost, bool):
        return cost
    return 0


def audit_record(ctx: RequestContext, *, body_mode: str) -> AuditRecord:
    elapsed = ctx.elapsed()
    deployment = ctx.deployment
    # Credentials of the providers this request could have reached, redacted as literals.
    candidates = ctx.route.deployments if ctx.route else ((deployment,) if deployment else ())
    secrets = tuple({d.provider.credential for d in candidates if d.provider.credential})
    return AuditRecord(
        time=timezone.now() - timedelta(seconds=elapsed),
        request_id=ctx.request_id,
        endpoint=ctx.endpoint,
        status=ctx.status,
        error_class=ctx.error_class or "",
        consumer_id=ctx.key.consumer_id if ctx.key else None,
        consumer_name=ctx.key.consumer_name if ctx.key else "",
        key_prefix=ctx.key.prefix if ctx.key else "",
        route=ctx.route.model if ctx.route else (ctx.requested_model or ""),
        provider=deployment.provider.name if deployment else "",
        upstream_model=deployment.upstream_model if deployment else "",
        prompt_tokens=ctx.prompt_tokens,
        completion_tokens=ctx.completion_tokens,
        cost_micros=_cost_micros(ctx),
        latency_us=int(elapsed * 1_000_000),
        ttft_us=None if ctx.first_byte_seconds is None else int(ctx.first_byte_seconds * 1_000_000),
        attempts=ctx.attempts,
        client_ip=ctx.client_ip or "",
        user_agent=ctx.user_agent,
        body_mode=body_mode,
        request_body=ctx.request_body,
        response_body=ctx.response_body,
        secrets=secrets,
    )


async def record(ctx: RequestContext) -> None:
    """Write the request's audit event durably; returns once it is stored."""
    if ctx.request_body is None:
        body_mode = BodyMode.NONE if ctx.key is None else ctx.audit_body_mode
    else:
        body_mode = BodyMode.FULL if ctx.capture_limit > 0 else BodyMode.METADATA
    await event_write(audit_record(ctx, body_mode=body_mode))


def _error_class_of(response: HttpResponse) -> str:
    if response.status_code < 400 or getattr(response, "streaming", False):
        return ""
    try:
        error = orjson.loads(response.content).get("error") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return str(error.get("code") or error.get("type") or "") if isinstance(error, dict) else ""


View = Callable[..., Awaitable[HttpResponse]]


def recorded_view(endpoint: str) -> Callable[[View], View]:
    """Audit a proxy view that does not go through the pipeline (models list, unknown paths).

    Wraps the view from the outside (in urls.py), so it needs no change to the
    view: the key is looked up again after the answer (a per-worker cache hit).
    """
    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            from proxy.auth import authenticate

            ctx = RequestContext(caller=Caller.OPENAI, endpoint=endpoint)
            ctx.client_ip = request.META.get("REMOTE_ADDR")
            ctx.user_agent = request.headers.get("User-Agent", "")[:300]
            model = kwargs.get("model")
            if isinstance(model, str):
                ctx.requested_model = model
            try:
                response = await view(request, *args, **kwargs)
            except Exception:
                ctx.status, ctx.error_class = 500, "internal_error"
                await record(ctx)
                raise
            try:
                ctx.key = await authenticate(request)
            except GatewayError:
                pass
            ctx.status = response.status_code
            ctx.error_class = _error_class_of(response) or None
            await record(ctx)
            response["x-request-id"] = ctx.request_id
            return response

        return wrapper

    return decorate
