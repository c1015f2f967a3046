"""Everything the gateway learns about one request, from arrival to the audit row."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from budgets.selectors import KeyInfo
from proxy.errors import Caller
from proxy.routing import DeploymentInfo, RouteInfo


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


@dataclass(slots=True)
class RequestContext:
    caller: Caller
    endpoint: str
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.perf_counter)
    key: KeyInfo | None = None
    route: RouteInfo | None = None
    deployment: DeploymentInfo | None = None
    stream: bool = False
    attempts: int = 0
    # Deployments given up on for this request before the one that answered (or the last failure).
    failovers: int = 0
    # The provider named in X-Provider, if any.
    pinned_provider: str | None = None
    # The one deployment that may answer (a Responses previous_response_id lives with it), if any.
    pinned_deployment: int | None = None
    upstream_seconds: float = 0.0
    first_byte_seconds: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # Parts of prompt_tokens and completion_tokens that providers price apart (budgets/pricing.py),
    # in the IR's convention (proxy/providers/ir.py Usage); the codecs fill them.
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    # Where the charged usage came from: "provider" (its usage fields) or "estimated" (they never came:
    # a client that left, a stream cut, a timeout; proxy.admission.usage_complete). None: nothing used.
    usage_source: str | None = None
    # The provider took the request (an answer or a stream began, or it timed out or was left while
    # generating): what it bills is charged even if its usage never comes.
    upstream_started: bool = False
    # Bytes of answer text relayed so far (the output's estimate when the provider's count never comes).
    relayed_bytes: int = 0
    # What admission worked out (proxy.bounds): the prompt estimate, the output bound sent upstream
    # (None: not worked out, e.g. a refusal before admission) and the tokens reserved.
    prompt_estimate: int = 0
    max_output_tokens: int | None = None
    reserved_tokens: int = 0
    # Deployments a cost budget cannot charge (no price): routing skips them (proxy.calls.plan_attempts).
    unpriced_deployments: frozenset[int] = frozenset()
    # How the request ends, as its client sees it: set through outcome() and stream_ends().
    status: int | None = None
    error_class: str | None = None
    # A stream's next chunk is its last event (set by the relay; proxy.pipeline finishes first).
    ending: bool = False
    client_ip: str | None = None
    user_agent: str = ""
    # Set by proxy.pipeline.request_finish, the one place a request is settled and recorded.
    finished: bool = False
    # What budgets admitted for this request (set by proxy.admission).
    admission: Any = None
    # What the request cost at the price table's rates, in micro-dollars (None: no price known).
    cost_microusd: int | None = None
    # Bodies for the audit log, kept only when the consumer's audit policy asks for them.
    capture_limit: int = 0
    request_body: Any = None
    response_body: bytearray | None = None
    # The `model` the client asked for, recorded even when no route matched it.
    requested_model: str | None = None
    # Seconds spent in each stage of the request path (for profiling; see lap()).
    stages: dict[str, float] = field(default_factory=dict)
    _lap_mark: float | None = None

    def lap(self, stage: str) -> None:
        """Charge the time since the previous lap (or the start) to `stage`."""
        now = time.perf_counter()
        since = self.started if self._lap_mark is None else self._lap_mark
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - since)
        self._lap_mark = now

    @property
    def audit_body_mode(self) -> str:
        """The body mode of the caller's consumer, which came with its key; the default without one."""
        mode = self.key.audit_body_mode if self.key is not None else None
        return mode or settings.TOLLGATE_AUDIT_DEFAULT_BODY_MODE

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def overhead_ms(self) -> float:
        """Time spent in the gateway itself, so far, excluding waits on the provider."""
        return max(0.0, (self.elapsed() - self.upstream_seconds) * 1000.0)

    def outcome(self, status: int | None, error_class: str | None = None) -> None:
        """Mark the answer: the HTTP status the client gets, and the error class (None: answered)."""
        self.status = status
        self.error_class = error_class

    def stream_ends(self, error_class: str | None = None) -> None:
        """Mark the stream's next chunk as its last event (its end, or an error event of `error_class`):
        the pipeline finishes the request before it releases that chunk (DESIGN §4)."""
        if error_class is not None:
            self.error_class = error_class
        self.ending = True

    def capture_response(self, chunk: bytes) -> None:
        """Keep up to `capture_limit` bytes of what was sent to the client (no-op when 0)."""
        if self.capture_limit <= 0:
            return
        if self.response_body is None:
            self.response_body = bytearray()
        room = self.capture_limit - len(self.response_body)
        if room > 0:
            self.response_body += chunk[:room]

    def record_usage(self, usage: object) -> None:
        """Take token counts from an OpenAI-shaped `usage` object, ignoring anything malformed."""
        if isinstance(usage, dict):
            self.record_tokens(usage.get("prompt_tokens"), usage.get("completion_tokens"))

    def record_usage_detail(self, usage: Any, *, output: bool = True) -> None:
        """Take every token class of an IR Usage or StreamUsage (proxy/providers/ir.py).

        The prompt's classes are taken with the prompt count they are parts of, and the reasoning
        with the output, so a report that carries only one side (Anthropic's message_delta of older
        API versions, a stream's first event) never zeroes the other's classes. `output=False`
        ignores the output count (Anthropic's message_start says 1 before anything is generated).
        """
        prompt = getattr(usage, "input_tokens", None)
        if _is_count(prompt):
            self.prompt_tokens = prompt
            self.cache_read_tokens = _count(getattr(usage, "cache_read_tokens", 0))
            self.cache_write_tokens = _count(getattr(usage, "cache_write_tokens", 0))
            self.cache_write_1h_tokens = _count(getattr(usage, "cache_write_1h_tokens", 0))
        completion = getattr(usage, "output_tokens", None) if output else None
        if _is_count(completion):
            self.completion_tokens = completion
            self.reasoning_tokens = _count(getattr(usage, "reasoning_tokens", 0))

    def record_tokens(self, prompt: object, completion: object) -> None:
        """Take prompt and completion token counts, ignoring any that is not an integer."""
        if isinstance(prompt, int) and not isinstance(prompt, bool):
            self.prompt_tokens = prompt
        if isinstance(completion, int) and not isinstance(completion, bool):
            self.completion_tokens = completion


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
