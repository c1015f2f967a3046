"""OpenTelemetry traces of the request path, exported over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set.

Off by default, at no cost: without the variable this module imports nothing of OpenTelemetry,
and the pipeline makes plain RequestContexts. With it, the pipeline makes TracedContexts, which
keep the start and end of each stage of the request path as they are timed anyway (ctx.lap)
and of each upstream attempt; when the request is finished (proxy.pipeline.request_finish)
its spans are made at once, with those times, and handed to the SDK's batch processor, whose
thread sends them. Nothing is traced on the way, so no span is left open by a request that is
cancelled, and the request path pays one list append per stage.

One trace per request: a SERVER span named as the GenAI semantic conventions name an inference
span (`chat {model}`), with children for the stages (`auth`, `admission`, `relay` (a stream) or
`answer`, `audit`) and one CLIENT span per upstream attempt (`chat {upstream model}`, on its
provider); every stage's milliseconds, those without a span of their own too (parse, route, call,
settle, finish), are attributes of the request span (tollgate.stage_ms.<stage>). Attributes: gen_ai.operation.name,
gen_ai.provider.name and gen_ai.system (the same value, under the conventions' older name),
gen_ai.request.model (the model the caller asked for), gen_ai.response.model (the upstream model that
answered), gen_ai.usage.input_tokens and gen_ai.usage.output_tokens, tollgate.cost_usd and
tollgate.cost_microusd, http.response.status_code, error.type, and the gateway's own
(tollgate.request_id, tollgate.consumer, tollgate.key_prefix, tollgate.route, tollgate.endpoint,
tollgate.attempts, tollgate.stream, tollgate.usage_source). Never a key, a credential or a body.

Configured by OpenTelemetry's own variables: OTEL_EXPORTER_OTLP_ENDPOINT (spans go to
<endpoint>/v1/traces) or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_HEADERS,
OTEL_SERVICE_NAME (default `tollgate`), OTEL_RESOURCE_ATTRIBUTES, OTEL_BSP_* (batching),
OTEL_TRACES_SAMPLER(_ARG). The SDK and the exporter are the `otel` extra (pyproject.toml).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.context import RequestContext

if TYPE_CHECKING:
    from proxy.routing import DeploymentInfo

logger = logging.getLogger(__name__)

ENABLED = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))

# gen_ai.provider.name per provider kind (the conventions' well-known values where there is one).
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini",
                  "openai_compatible": "openai", "sandbox": "tollgate.sandbox"}
# The stages (ctx.lap) that are spans of their own, by span name; the others (parse, route, call,
# finish) are attributes of the request span (tollgate.stage_ms.<stage>): each span costs the
# SDK a fifth of a millisecond of CPU or more to make, encode and send (docs/performance.md).
STAGE_SPANS = {"auth": "auth", "admit": "admission", "answer": "answer"}


@dataclass(slots=True)
class TracedContext(RequestContext):
    """A RequestContext that keeps when each stage and each upstream attempt began and ended."""

    # (span name, start, end in perf_counter seconds, attributes)
    intervals: list[tuple[str, float, float, dict[str, Any] | None]] = field(default_factory=list)

    def lap(self, stage: str) -> None:
        since = self.started if self._lap_mark is None else self._lap_mark
        RequestContext.lap(self, stage)
        name = STAGE_SPANS.get(stage)
        if name is not None:
            end = self._lap_mark
            assert end is not None
            self.intervals.append(("relay" if name == "answer" and self.stream else name, since, end, None))


def context(**kwargs: Any) -> RequestContext:
    """A request's context: traced when tracing is on."""
    return TracedContext(**kwargs) if ENABLED else RequestContext(**kwargs)


def interval(ctx: RequestContext, name: str, start: float, end: float, attributes: dict[str, Any] | None = None,
             ) -> None:
    """Note a part of the request that ctx.lap does not time (the audit write, settling, an attempt)."""
    if isinstance(ctx, TracedContext):
        ctx.intervals.append((name, start, end, attributes))


def attempt(ctx: RequestContext, deployment: DeploymentInfo, start: float, error_class: str | None) -> None:
    """Note one upstream attempt, from its start until its answer (or a stream's first bytes) or failure."""
    if isinstance(ctx, TracedContext):
        provider = deployment.provider
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": _operation(ctx), "gen_ai.request.model": deployment.upstream_model,
            "gen_ai.provider.name": PROVIDER_NAMES.get(provider.kind, provider.kind),
            "tollgate.provider": provider.name, "tollgate.deployment_id": deployment.id,
        }
        if error_class is not None:
            attributes["error.type"] = error_class
        ctx.intervals.append((f"{_operation(ctx)} {deployment.upstream_model}", start, time.perf_counter(),
                              attributes))


def _operation(ctx: RequestContext) -> str:
    return "embeddings" if "embed" in ctx.endpoint.lower() else "chat"


def request_attributes(ctx: RequestContext) -> dict[str, Any]:
    """The request span's attributes (GenAI semantic conventions, then the gateway's own)."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": _operation(ctx),
        "tollgate.request_id": ctx.request_id,
        "tollgate.endpoint": ctx.endpoint,
        "tollgate.stream": ctx.stream,
        "tollgate.attempts": ctx.attempts,
    }
    requested = ctx.route.model if ctx.route is not None else ctx.requested_model
    if requested:
        attributes["gen_ai.request.model"] = requested
        attributes["tollgate.route"] = requested
    if ctx.deployment is not None:
        provider = ctx.deployment.provider
        attributes["gen_ai.provider.name"] = attributes["gen_ai.system"] = PROVIDER_NAMES.get(provider.kind,
                                                                                             provider.kind)
        attributes["gen_ai.response.model"] = ctx.deployment.upstream_model
        attributes["tollgate.provider"] = provider.name
    if ctx.prompt_tokens is not None:
        attributes["gen_ai.usage.input_tokens"] = ctx.prompt_tokens
    if ctx.completion_tokens is not None:
        attributes["gen_ai.usage.output_tokens"] = ctx.completion_tokens
    if ctx.usage_source is not None:
        attributes["tollgate.usage_source"] = ctx.usage_source
    if ctx.cost_microusd is not None:
        attributes["tollgate.cost_microusd"] = ctx.cost_microusd
        attributes["tollgate.cost_usd"] = ctx.cost_microusd / 1_000_000
    if ctx.key is not None:
        attributes["tollgate.consumer"] = ctx.key.consumer_name
        attributes["tollgate.key_prefix"] = ctx.key.prefix
    if ctx.status is not None:
        attributes["http.response.status_code"] = ctx.status
    if ctx.error_class is not None:
        attributes["error.type"] = ctx.error_class
    if ctx.first_byte_seconds is not None:
        attributes["tollgate.time_to_first_byte_ms"] = round(ctx.first_byte_seconds * 1000, 2)
    for stage, seconds in ctx.stages.items():
        attributes[f"tollgate.stage_ms.{stage}"] = round(seconds * 1000, 3)
    return attributes


def export(ctx: RequestContext) -> None:
    """Make the finished request's spans and hand them to the exporter. Never raises."""
    if not isinstance(ctx, TracedContext):
        return
    try:
        _export(ctx)
    except Exception:
        logger.warning("could not trace request %s", ctx.request_id, exc_info=True)


def _export(ctx: TracedContext) -> None:
    from opentelemetry import trace

    tracer = _tracer()
    # perf_counter seconds -> Unix nanoseconds, as the spans need them.
    offset = time.time_ns() - int(time.perf_counter() * 1e9)

    def ns(moment: float) -> int:
        return offset + int(moment * 1e9)

    requested = ctx.route.model if ctx.route is not None else ctx.requested_model
    name = f"{_operation(ctx)} {requested}" if requested else ctx.endpoint
    root = tracer.start_span(name, kind=trace.SpanKind.SERVER, start_time=ns(ctx.started),
                             attributes=request_attributes(ctx))
    if not root.is_recording():
        return  # not sampled (OTEL_TRACES_SAMPLER): nor are its children
    if ctx.error_class is not None and (ctx.status or 0) >= 500:
        root.set_status(trace.Status(trace.StatusCode.ERROR, ctx.error_class))
    parent = trace.set_span_in_context(root)
    for span_name, start, end, attributes in ctx.intervals:
        client = attributes is not None and "gen_ai.provider.name" in attributes
        span = tracer.start_span(span_name, context=parent, start_time=ns(start), attributes=attributes,
                                 kind=trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL)
        if attributes is not None and "error.type" in attributes:
            span.set_status(trace.Status(trace.StatusCode.ERROR, attributes["error.type"]))
        span.end(end_time=ns(end))
    root.end(end_time=time.time_ns())


_provider: Any = None


def _tracer() -> Any:
    """This process's tracer (made on first use: in each worker, after gunicorn forked it)."""
    global _provider
    if _provider is None or _provider[0] != os.getpid():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        service = os.environ.get("OTEL_SERVICE_NAME") or "tollgate"
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        _provider = (os.getpid(), provider, provider.get_tracer("tollgate.proxy"))
    return _provider[2]


def flush(timeout_millis: int = 5000) -> bool:
    """Send what is queued now (at shutdown, and for tests)."""
    if _provider is None:
        return True
    return bool(_provider[1].force_flush(timeout_millis))


def shutdown() -> None:
    global _provider
    if _provider is not None:
        _provider[1].shutdown()
        _provider = None
