"""The recording half of step 8: hand the finished request to the audit log (DESIGN §1, §4).

`record(ctx)` returns once the request's audit event is committed; its one caller,
proxy.pipeline.request_finish, runs it before the answer (or the end of a stream)
is released, so a client that saw an answer has its event even if the worker dies
right after.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from audit.models import BodyMode
from audit.services import AuditRecord
from audit.writer import event_write
from proxy.context import RequestContext

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


def _token_classes(ctx: RequestContext) -> dict[str, int | None]:
    """The token classes the cost was priced from (issue #16); None for a request without usage."""
    has_usage = ctx.prompt_tokens is not None or ctx.completion_tokens is not None
    return {name: getattr(ctx, name) if has_usage else None for name in
            ("cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens")}


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
        usage_source=ctx.usage_source,
        **_token_classes(ctx),
        secrets=secrets,
    )


async def record(ctx: RequestContext) -> None:
    """Write the request's audit event durably; returns once it is stored."""
    if ctx.request_body is None:
        body_mode = BodyMode.NONE if ctx.key is None else ctx.audit_body_mode
    else:
        body_mode = BodyMode.FULL if ctx.capture_limit > 0 else BodyMode.METADATA
    await event_write(audit_record(ctx, body_mode=body_mode))
