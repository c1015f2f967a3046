"""The sandbox provider: a fake model provider that speaks OpenAI, Anthropic and Gemini.

It lets the quickstart, the end-to-end tests, the benchmark and users' own CI run without any
real API key. Replies and token counts are deterministic functions of the request (see
`count_tokens`, `prompt_tokens` and `plan_reply`), so tests can assert exact values.
docs/sandbox.md is the user documentation.

A package because it has several clear parts: the knobs (config), the deterministic model
(model, fields), one module per wire format, the ASGI server and the command line. This file only
re-exports the names that callers use, so that `from proxy.sandbox import ...` keeps working.
"""
from __future__ import annotations

from proxy.sandbox.cli import add_arguments, config_from_options, main, serve
from proxy.sandbox.config import SandboxConfig
from proxy.sandbox.embeddings import embedding_vector
from proxy.sandbox.errors import error_body
from proxy.sandbox.formats import expected_usage, parse_request
from proxy.sandbox.model import (
    Conversation,
    Reply,
    SandboxRequestError,
    Usage,
    apply_usage_knobs,
    canonical_json,
    count_tokens,
    plan_reply,
    prompt_tokens,
    sample_arguments,
    sample_value,
    split_chunks,
    tools_json,
)
from proxy.sandbox.server import SandboxApp, make_app
from proxy.sandbox.transport import SandboxDisconnect

__all__ = [
    "Conversation",
    "Reply",
    "SandboxApp",
    "SandboxConfig",
    "SandboxDisconnect",
    "SandboxRequestError",
    "Usage",
    "add_arguments",
    "apply_usage_knobs",
    "canonical_json",
    "config_from_options",
    "count_tokens",
    "embedding_vector",
    "error_body",
    "expected_usage",
    "main",
    "make_app",
    "parse_request",
    "plan_reply",
    "prompt_tokens",
    "sample_arguments",
    "sample_value",
    "serve",
    "split_chunks",
    "tools_json",
]
