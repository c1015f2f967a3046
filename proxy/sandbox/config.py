"""The sandbox's knobs: server-wide (SandboxConfig) and per request (x-sandbox-* headers).

They live apart from the server so that the command line, tests and the server share one
definition and one validation of every knob.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MAX_CHUNKS = 100_000
# The knobs that shape the reported usage (cache reads and writes, hidden reasoning), in the
# keyword names of model.apply_usage_knobs and formats.expected_usage.
USAGE_KNOBS = ("cache_read_tokens", "cache_read_percent", "cache_write_tokens", "cache_write_percent",
               "reasoning_tokens")


@dataclass
class SandboxConfig:
    """Server-wide knobs. All can be changed at runtime (POST /_sandbox/config) and most per request."""

    latency_ms: int = 0  # delay before the response headers
    chunk_delay_ms: int = 0  # delay between consecutive stream events
    chunks: int = 8  # content events per stream
    fail_status: int | None = None  # answer model calls with this status and error body
    fail_count: int = 0  # fail only the next N model calls (0 with fail_status: fail all)
    fail_every: int = 0  # with fail_status: fail one model call in N (the Nth, 2Nth, ...) and go on
    disconnect_after: int | None = None  # drop stream connections after N events
    hang_ms: int = 0  # sleep before anything else, to provoke client timeouts
    require_key: str | None = None  # accept only this API key (default: any non-empty key)
    # Usage as a provider with a prompt cache and a reasoning model reports it (docs/sandbox.md):
    cache_read_tokens: int = 0  # prompt tokens read from cache (capped at the prompt)
    cache_read_percent: int = 0  # the same as a percentage of the prompt, when cache_read_tokens is 0
    cache_write_tokens: int = 0  # prompt tokens written to cache (capped at the prompt not read)
    cache_write_percent: int = 0  # the same as a percentage of the prompt, when cache_write_tokens is 0
    reasoning_tokens: int = 0  # hidden reasoning tokens added to the output (within max_tokens)
    fail_retry_after: int | None = None  # Retry-After (s) of a simulated failure; None: 1 on 429, 503, 529
    fail_realistic: int = 0  # 1: a simulated failure carries a real provider's text (key fragment, org id)

    def validate(self) -> None:
        """Raise ValueError naming the first knob with a bad value."""
        for name, low, high in (("latency_ms", 0, None), ("chunk_delay_ms", 0, None), ("hang_ms", 0, None),
                                ("chunks", 1, MAX_CHUNKS), ("fail_count", 0, None),
                                ("fail_every", 0, None), ("cache_read_tokens", 0, None),
                                ("cache_read_percent", 0, 100), ("cache_write_tokens", 0, None),
                                ("cache_write_percent", 0, 100), ("reasoning_tokens", 0, None),
                                ("fail_realistic", 0, 1)):
            check_int(name, getattr(self, name), low, high)
        if self.fail_status is not None:
            check_int("fail_status", self.fail_status, 400, 599)
        if self.disconnect_after is not None:
            check_int("disconnect_after", self.disconnect_after, 0, None)
        if self.fail_retry_after is not None:
            check_int("fail_retry_after", self.fail_retry_after, 0, None)
        if self.require_key is not None and not isinstance(self.require_key, str):
            raise ValueError("require_key must be a string or null")

    def merged(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """A validated copy with `changes` applied; unknown names are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown knob(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        new = dataclasses.replace(self, **changes)
        if new.require_key == "":
            new.require_key = None
        new.validate()
        return new


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int | None) -> None:
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {bound}")


@dataclass(slots=True)
class RequestKnobs:
    latency_ms: int
    chunk_delay_ms: int
    chunks: int
    fail_status: int | None  # 0 = explicitly no failure for this request
    disconnect_after: int | None
    hang_ms: int
    cache_read_tokens: int
    cache_read_percent: int
    cache_write_tokens: int
    cache_write_percent: int
    reasoning_tokens: int
    fail_retry_after: int | None = None
    fail_realistic: int = 0

    def usage_knobs(self) -> dict[str, int]:
        """The usage knobs, as keyword arguments of model.apply_usage_knobs."""
        return {name: getattr(self, name) for name in USAGE_KNOBS}


OVERRIDE_HEADERS = (("x-sandbox-latency-ms", "latency_ms", 0, None),
                    ("x-sandbox-chunk-delay-ms", "chunk_delay_ms", 0, None),
                    ("x-sandbox-chunks", "chunks", 1, MAX_CHUNKS),
                    ("x-sandbox-fail-status", "fail_status", 0, 599),
                    ("x-sandbox-disconnect-after", "disconnect_after", 0, None),
                    ("x-sandbox-hang-ms", "hang_ms", 0, None),
                    ("x-sandbox-cache-read-tokens", "cache_read_tokens", 0, None),
                    ("x-sandbox-cache-read-percent", "cache_read_percent", 0, 100),
                    ("x-sandbox-cache-write-tokens", "cache_write_tokens", 0, None),
                    ("x-sandbox-cache-write-percent", "cache_write_percent", 0, 100),
                    ("x-sandbox-reasoning-tokens", "reasoning_tokens", 0, None),
                    ("x-sandbox-fail-retry-after", "fail_retry_after", 0, None),
                    ("x-sandbox-fail-realistic", "fail_realistic", 0, 1))


def request_knobs(config: SandboxConfig, headers: Mapping[str, str]) -> RequestKnobs:
    """The knobs of one request: the live config, overridden by its x-sandbox-* headers.

    Raises ValueError naming the header with a bad value.
    """
    knobs = RequestKnobs(config.latency_ms, config.chunk_delay_ms, config.chunks, None, config.disconnect_after,
                         config.hang_ms, fail_retry_after=config.fail_retry_after,
                         fail_realistic=config.fail_realistic, **{name: getattr(config, name) for name in USAGE_KNOBS})
    for header, name, low, high in OVERRIDE_HEADERS:
        value = headers.get(header)
        if value is None:
            continue
        try:
            number = int(value)
        except ValueError:
            number = -1
        if number < low or (high is not None and number > high) or (name == "fail_status" and 0 < number < 400):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"Sandbox: header {header} must be an integer {bound}, got {value!r}.")
        setattr(knobs, name, number)
    return knobs
