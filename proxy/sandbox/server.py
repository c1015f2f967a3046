"""The sandbox provider's server: routing, authentication, knobs, failures, streams, control endpoints.

A plain ASGI application with no framework: it is the upstream of a benchmark of thousands of
requests per second and thousands of concurrent slow streams, and must never be the bottleneck.
The wire formats live in their own modules; this one only decides which answers a request.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import orjson

import proxy.sandbox.anthropic_messages as anthropic_messages
import proxy.sandbox.embeddings as embeddings
import proxy.sandbox.gemini_generate as gemini_generate
import proxy.sandbox.openai_chat as openai_chat
import proxy.sandbox.openai_responses as openai_responses
from proxy.sandbox.config import RequestKnobs, SandboxConfig, request_knobs
from proxy.sandbox.formats import parse_request
from proxy.sandbox.model import (
    Conversation,
    Reply,
    SandboxRequestError,
    Wire,
    apply_usage_knobs,
    plan_reply,
    prompt_tokens,
)
from proxy.sandbox.transport import (
    JSON,
    MAX_BODY_BYTES,
    SSE,
    BodyTooLarge,
    ClientGone,
    Message,
    Receive,
    SandboxDisconnect,
    Scope,
    Send,
    quiet_disconnect_logs,
    read_body,
    send_error,
    send_failure,
    send_json,
)

MODELS = ("sandbox-small", "sandbox-medium", "sandbox-large")
REQUEST_LOG_SIZE = 200

logger = logging.getLogger(__name__)

_GEMINI_PATH = re.compile(r"^/(?:v1beta|v1)/models/([^/:]+):"
                          r"(generateContent|streamGenerateContent|countTokens|embedContent|batchEmbedContents)$")
_EMBEDDING_ACTIONS = frozenset({"embeddings", "embedContent", "batchEmbedContents"})
# The model calls, which a provider bills and may fail: fail_status applies to these only.
_MODEL_ACTIONS = frozenset({"chat", "responses", "messages", "generateContent", "streamGenerateContent"}
                           | _EMBEDDING_ACTIONS)
# The format each conversation action is parsed as (formats.parse_request).
_PARSED_AS = {"chat": "openai.chat", "responses": "openai.responses", "messages": "anthropic.messages",
              "count_tokens": "anthropic.messages", "generateContent": "gemini.generateContent",
              "streamGenerateContent": "gemini.generateContent", "countTokens": "gemini.generateContent"}
_INVALID = object()


def _route(path: str, headers: dict[str, str]) -> tuple[Wire, str | None, str, str]:
    """(wire format, action, model from the URL, allowed method); action None: unknown path."""
    if path == "/v1/chat/completions":
        return "openai", "chat", "", "POST"
    if path == "/v1/responses":
        return "openai", "responses", "", "POST"
    if path == "/v1/embeddings":
        return "openai", "embeddings", "", "POST"
    if path == "/v1/messages":
        return "anthropic", "messages", "", "POST"
    if path == "/v1/messages/count_tokens":
        return "anthropic", "count_tokens", "", "POST"
    if path == "/v1/models":
        # Both SDKs list models at this path; the Anthropic one always sends anthropic-version.
        return ("anthropic" if "anthropic-version" in headers else "openai"), "models", "", "GET"
    if path == "/v1beta/models":
        return "gemini", "models", "", "GET"
    match = _GEMINI_PATH.match(path)
    if match:
        return "gemini", match.group(2), match.group(1), "POST"
    if path.startswith("/v1beta/"):
        return "gemini", None, "", ""
    if "anthropic-version" in headers or "x-api-key" in headers:
        return "anthropic", None, "", ""
    return "openai", None, "", ""


def _api_key(wire: Wire, headers: dict[str, str], query: dict[str, str]) -> str:
    if wire == "gemini":
        return headers.get("x-goog-api-key") or query.get("key") or ""
    if wire == "anthropic" and headers.get("x-api-key"):
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class SandboxApp:
    """The ASGI callable. `config` is the live configuration; `reset()` restores the startup one."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        startup = config or SandboxConfig()
        startup.validate()
        self.startup_config = dataclasses.replace(startup)
        self.config = dataclasses.replace(startup)
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_SIZE)
        self.total = 0
        self.by_path: dict[str, int] = {}
        self.by_status: dict[str, int] = {}
        self.client_disconnects = 0  # streams whose client went away before the end
        self.generations = 0  # model calls that met a server-wide failure setting (fail_every)

    def reset(self) -> None:
        self.config = dataclasses.replace(self.startup_config)
        self.generations = 0
        self.requests.clear()
        self.total = 0
        self.by_path.clear()
        self.by_status.clear()
        self.client_disconnects = 0

    def stats(self) -> dict[str, Any]:
        return {"requests": self.total, "by_path": dict(self.by_path), "by_status": dict(self.by_status),
                "client_disconnects": self.client_disconnects}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif kind == "websocket":
            # None of the three APIs is a websocket; closing before accept is a 403.
            await send({"type": "websocket.close", "code": 1008})

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith("/_sandbox/"):
            try:
                await self._control(scope, receive, send, path)
            except ClientGone:
                pass
            return
        status = 0

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        wire: Wire = "openai"
        try:
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            wire = _route(path, headers)[0]
            await self._api(scope, receive, tracked, path, headers)
        except ClientGone:
            pass  # nobody is left to answer
        except SandboxDisconnect:
            raise  # the server drops the connection: that is the point
        except Exception:
            # A bug of the sandbox must still look like the API it imitates.
            logger.exception("sandbox failed on %s %s", scope["method"], path)
            if status == 0:
                await send_error(tracked, wire, 500, "Sandbox: internal error (a bug in the sandbox).")
        finally:
            self.total += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1
            key = str(status)
            self.by_status[key] = self.by_status.get(key, 0) + 1

    async def _api(self, scope: Scope, receive: Receive, send: Send, path: str, headers: dict[str, str]) -> None:
        wire, action, model, method = _route(path, headers)
        query_string = scope.get("query_string", b"")
        query = dict(parse_qsl(query_string.decode("latin-1"))) if query_string else {}
        too_large = False
        try:
            raw = await read_body(receive)
        except BodyTooLarge:
            raw, too_large = b"", True
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = _INVALID
        # The format names the API and the call ("openai.responses", "gemini.embedContent"), so that
        # end-to-end tests can check which wire format the gateway spoke upstream.
        self.requests.append({"method": scope["method"], "path": path, "query": query, "headers": headers,
                              "body": None if body is _INVALID else body,
                              "format": f"{wire}.{action}" if action is not None else None})

        try:
            knobs = request_knobs(self.config, headers)
        except ValueError as exc:
            await send_error(send, wire, 400, str(exc))
            return
        if knobs.hang_ms:
            await asyncio.sleep(knobs.hang_ms / 1000)
        if knobs.latency_ms:
            await asyncio.sleep(knobs.latency_ms / 1000)

        if action is None:
            await send_error(send, wire, 404, f"Sandbox: no such endpoint: {scope['method']} {path}.")
            return
        if scope["method"] != method:
            await send_error(send, wire, 405, f"Sandbox: {path} only accepts {method}.")
            return
        key = _api_key(wire, headers, query)
        if not key:
            await send_error(send, wire, 401, "Sandbox: missing API key.")
            return
        required = self.config.require_key
        if required is not None and not secrets.compare_digest(key.encode(), required.encode()):
            await send_error(send, wire, 401, "Sandbox: invalid API key (the sandbox runs with --require-key).")
            return
        if action in _MODEL_ACTIONS:
            failure = self._take_failure(knobs.fail_status)
            if failure:
                await send_failure(send, wire, failure, retry_after=knobs.fail_retry_after,
                                   realistic=bool(knobs.fail_realistic))
                return
        if action == "models":
            await send_json(send, 200, _models_list(wire))
            return
        if wire == "anthropic" and "anthropic-version" not in headers:
            # The real API refuses requests without it; a gateway that forgets it must find out here.
            await send_error(send, wire, 400, "anthropic-version: header is required")
            return
        if too_large:
            await send_error(send, wire, 413, f"Sandbox: request body over the {MAX_BODY_BYTES} bytes limit.")
            return
        if body is None or body is _INVALID:
            await send_error(send, wire, 400, "The request body is not valid JSON.")
            return
        if action in _EMBEDDING_ACTIONS:
            await self._embed(send, wire, action, body, model)
            return
        if wire == "gemini" and action == "countTokens" and isinstance(body, dict) \
                and isinstance(body.get("generateContentRequest"), dict):
            body = body["generateContentRequest"]
        try:
            conv = parse_request(_PARSED_AS[action], body, model=model,
                                 count_only=action in ("count_tokens", "countTokens"),
                                 anthropic_beta=headers.get("anthropic-beta", ""))
        except SandboxRequestError as exc:
            await send_error(send, wire, 400, exc.message, exc.param)
            return

        if action == "count_tokens":
            await send_json(send, 200, {"input_tokens": prompt_tokens(conv)})
            return
        if action == "countTokens":
            await send_json(send, 200, {"totalTokens": prompt_tokens(conv)})
            return
        reply = plan_reply(conv)
        usage = apply_usage_knobs(reply.usage, max_tokens=conv.max_tokens, **knobs.usage_knobs())
        if usage != reply.usage:
            reply = dataclasses.replace(reply, usage=usage)
        # Ids derive from the request so that the same request gets the same answer, byte for byte
        # (OpenAI's `created` timestamp aside).
        ident = hashlib.blake2b(path.encode() + b"\0" + raw, digest_size=12).hexdigest()
        await self._answer(receive, send, action, conv, reply, ident, body, query, knobs)

    async def _answer(self, receive: Receive, send: Send, action: str, conv: Conversation, reply: Reply, ident: str,
                      body: dict, query: dict[str, str], knobs: RequestKnobs) -> None:
        """Send `reply` in the format of `action`, as one JSON body or as a stream."""
        events: Iterator[bytes]
        content_type = SSE
        if action == "chat":
            created = int(time.time())
            if not conv.stream:
                await send_json(send, 200, openai_chat.answer(conv, reply, ident, created))
                return
            events = openai_chat.events(conv, reply, ident, created, knobs.chunks)
        elif action == "responses":
            created = int(time.time())
            if not conv.stream:
                await send_json(send, 200, openai_responses.answer(conv, reply, ident, created, body))
                return
            events = openai_responses.events(conv, reply, ident, created, knobs.chunks, body)
        elif action == "messages":
            if not conv.stream:
                await send_json(send, 200, anthropic_messages.answer(conv, reply, ident))
                return
            events = anthropic_messages.events(conv, reply, ident, knobs.chunks)
        elif action == "streamGenerateContent":
            sse = query.get("alt") == "sse"
            events = gemini_generate.events(conv, reply, ident, knobs.chunks, sse)
            content_type = SSE if sse else JSON
        else:
            await send_json(send, 200, gemini_generate.answer(conv, reply, ident))
            return
        await self._stream(receive, send, events, knobs, content_type)

    async def _embed(self, send: Send, wire: Wire, action: str, body: Any, model: str) -> None:
        try:
            if not isinstance(body, dict):
                raise SandboxRequestError("The request body must be a JSON object.")
            if action == "embeddings":
                payload = embeddings.openai_answer(body)
            else:
                payload = embeddings.gemini_answer(action, body, model)
        except SandboxRequestError as exc:
            await send_error(send, wire, 400, exc.message, exc.param)
            return
        await send_json(send, 200, payload)

    def _take_failure(self, override: int | None) -> int:
        """The status to fail this model call with, or 0; counts fail_count down."""
        if override is not None:
            return override
        config = self.config
        status = config.fail_status
        if status is None:
            return 0
        if config.fail_every > 0:
            self.generations += 1
            return status if self.generations % config.fail_every == 0 else 0
        if config.fail_count > 0:
            config.fail_count -= 1
            if config.fail_count == 0:
                config.fail_status = None  # the last of the N failures: recover from the next request
        return status

    async def _stream(self, receive: Receive, send: Send, events: Iterator[bytes], knobs: RequestKnobs,
                      content_type: bytes) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")]})
        delay = knobs.chunk_delay_ms / 1000
        cut = knobs.disconnect_after
        if not delay and cut is None:
            # Without a delay the client cannot tell one write from many, and one write per event
            # (one syscall each) would make the sandbox the benchmark's bottleneck.
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
            return
        # A slow stream can outlive its client; watching for the disconnect ends it early instead of
        # sleeping to the end (the benchmark keeps thousands of them open).
        gone = asyncio.ensure_future(receive()) if delay else None
        try:
            for index, event in enumerate(events):
                if index == cut:
                    quiet_disconnect_logs()
                    raise SandboxDisconnect(f"disconnect_after={cut}")
                if gone is not None and index:
                    await asyncio.sleep(delay)
                    if gone.done():
                        self.client_disconnects += 1
                        return
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if gone is not None:
                gone.cancel()

    async def _control(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        method = scope["method"]
        if path == "/_sandbox/health":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/_sandbox/config" and method in ("GET", "POST"):
            if method == "POST":
                try:
                    changes = orjson.loads(await read_body(receive) or b"{}")
                    if not isinstance(changes, dict):
                        raise ValueError("the body must be a JSON object of knobs")
                    self.config = self.config.merged(changes)
                except (ValueError, TypeError, BodyTooLarge) as exc:
                    await send_json(send, 400, {"error": str(exc) or "invalid body"})
                    return
            await send_json(send, 200, dataclasses.asdict(self.config))
        elif path == "/_sandbox/reset" and method == "POST":
            self.reset()
            await send_json(send, 200, dataclasses.asdict(self.config))
        elif path == "/_sandbox/stats" and method == "GET":
            await send_json(send, 200, self.stats())
        elif path == "/_sandbox/requests" and method == "GET":
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            try:
                limit = int(query.get("limit", REQUEST_LOG_SIZE))
            except ValueError:
                limit = -1
            if limit < 0:
                await send_json(send, 400, {"error": "limit must be an integer >= 0"})
                return
            wanted = query.get("format")
            newest_first = [r for r in reversed(self.requests) if wanted is None or r["format"] == wanted][:limit]
            await send_json(send, 200, {"requests": newest_first})
        else:
            await send_json(send, 404, {"error": f"no such control endpoint: {method} {path}"})


def _models_list(wire: Wire) -> dict:
    if wire == "anthropic":
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in MODELS]
        return {"data": data, "has_more": False, "first_id": MODELS[0], "last_id": MODELS[-1]}
    if wire == "gemini":
        return {"models": [{"name": f"models/{m}", "version": "1", "displayName": m,
                            "inputTokenLimit": 1_048_576, "outputTokenLimit": 65_536,
                            "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                                           "countTokens"]} for m in MODELS]}
    return {"object": "list", "data": [{"id": m, "object": "model", "created": 1735689600,
                                        "owned_by": "tollgate-sandbox"} for m in MODELS]}


def make_app(config: SandboxConfig | None = None) -> SandboxApp:
    """The sandbox as an ASGI app, started with `config` (a copy: reset() returns to it)."""
    return SandboxApp(config)
