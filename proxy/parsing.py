"""Step 2 of the request path: read and check the body before anything is spent on it.

Checked here, before anything is stored or forwarded (docs/reliability.md, Hostile input): the
body's size (the real server's entry point, gateway_site/asgi.py, counts it while it arrives and
marks a refused body in META[BODY_REFUSED]), JSON, nesting depth (MAX_DEPTH), control characters
and lone surrogates in model names and in the header values the gateway forwards.
"""
from __future__ import annotations

import re
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest

from proxy.errors import GatewayError
from proxy.providers.registry import ADAPTERS

OPENAI_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Deeper bodies are refused. Providers' own limits are about this deep, and every translator and
# serializer after this step (orjson.dumps stops at 254) can then walk a body without a RecursionError.
MAX_DEPTH = 64
# Set by gateway_site/asgi.py when it stopped reading a body: "too_large" or "timeout".
BODY_REFUSED = "tollgate.body_refused"
# C0 controls and DEL, and lone surrogates (JSON can write them as \ud800; no provider accepts
# them, and neither does PostgreSQL's UTF-8). A header value may hold a tab (RFC 9110), a name not.
_BAD_NAME_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_BAD_HEADER_CHARS = re.compile("[\x00-\x08\x0a-\x1f\x7f]")
# Every client header some adapter may forward upstream, and X-Provider (a provider name).
FORWARDED_CLIENT_HEADERS = ("x-provider", *sorted({h for a in ADAPTERS.values() for h in a.FORWARDED_HEADERS}))


def read_json_object(request: HttpRequest) -> dict[str, Any]:
    """The body as a JSON object, and the forwarded headers checked; GatewayError (400, 408, 413) if not."""
    limit = settings.TOLLGATE_MAX_BODY_BYTES
    too_large = GatewayError(
        "request_too_large", f"Request body is larger than the gateway's limit of {limit} bytes."
    )
    refused = request.META.get(BODY_REFUSED)
    if refused == "too_large":
        raise too_large
    if refused == "timeout":
        raise GatewayError("request_timeout", "The request body did not arrive in time.",
                           code="request_body_timeout")
    check_forwarded_headers(request)
    declared = request.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    try:
        raw = request.body
    except RequestDataTooBig:
        raise too_large from None
    if len(raw) > limit:
        raise too_large
    if not raw.strip():
        raise GatewayError("invalid_request", "Request body is empty; send a JSON object.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit exceeded"):  # orjson's own limit (1024)
            raise _too_deep(None) from None
        raise GatewayError("invalid_request", f"Request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise GatewayError("invalid_request", "Request body must be a JSON object.")
    for name, value in data.items():
        if not _within_depth(value, MAX_DEPTH - 1):
            raise _too_deep(name)
    return data


def _too_deep(param: str | None) -> GatewayError:
    where = f" (in '{param}')" if param else ""
    return GatewayError("invalid_request", f"Request body is nested deeper than {MAX_DEPTH} levels{where}.",
                        param=param, code="nesting_too_deep")


def _within_depth(value: Any, limit: int) -> bool:
    """Whether `value` nests at most `limit` arrays or objects deep.

    One level at a time, without recursion, looking only at containers: 0.04 ms for an 84 kB
    Claude Code body (a quarter of orjson's parse); a bracket scan of the bytes that skips
    strings took 6 ms in Python (measured, docs/reliability.md).
    """
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return False
        below: list[Any] = []
        add = below.append
        for container in level:
            for child in container.values() if type(container) is dict else container:
                kind = type(child)
                if kind is dict or kind is list:
                    add(child)
        level = below
    return True


def check_model_name(model: str, param: str = "model") -> None:
    """400 for a model name with a control character or a lone surrogate (a provider refuses both)."""
    if _BAD_NAME_CHARS.search(model):
        raise _bad(param, f"'{param}' must not contain control characters or lone surrogates.")


def check_forwarded_headers(request: HttpRequest) -> None:
    """400 for a control character in a header value that the gateway would forward upstream."""
    headers = request.headers
    for name in FORWARDED_CLIENT_HEADERS:
        value = headers.get(name)
        if value is not None and _BAD_HEADER_CHARS.search(value):
            raise _bad(name, f"The '{name}' header must not contain control characters.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bad(param: str, message: str) -> GatewayError:
    return GatewayError("invalid_request", message, param=param, code="invalid_value")


def validate_openai_chat(data: dict[str, Any]) -> None:
    """Reject what OpenAI itself would reject, with the field named; pass the rest through."""
    model = data.get("model")
    if model is None:
        raise GatewayError("invalid_request", "Missing required parameter: 'model'.", param="model",
                           code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _bad("model", "'model' must be a non-empty string.")
    check_model_name(model)
    messages = data.get("messages")
    if messages is None:
        raise GatewayError("invalid_request", "Missing required parameter: 'messages'.", param="messages",
                           code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' must be a non-empty array of message objects.")
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _bad(where, f"'{where}' must be an object.")
        role = message.get("role")
        if not isinstance(role, str) or role not in OPENAI_ROLES:
            raise _bad(f"{where}.role", f"'{where}.role' must be one of: {', '.join(sorted(OPENAI_ROLES))}.")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"{where}.content", f"'{where}.content' must be a string or an array of content parts.")
        if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
            raise _bad(f"{where}.content", f"'{where}.content' parts must be objects.")
    if "stream" in data and data["stream"] is not None and not isinstance(data["stream"], bool):
        raise _bad("stream", "'stream' must be a boolean.")
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _bad("stream_options", "'stream_options' must be an object.")
    for name in ("max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs"):
        value = data.get(name)
        if value is not None and not _is_int(value):
            raise _bad(name, f"'{name}' must be an integer.")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = data.get(name)
        if value is not None and value < 1:
            raise _bad(name, f"'{name}' must be at least 1.")
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = data.get(name)
        if value is not None and not _is_number(value):
            raise _bad(name, f"'{name}' must be a number.")
    stop = data.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _bad("stop", "'stop' must be a string or an array of strings.")
    tools = data.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
            raise _bad("tools", "'tools' must be an array of tool objects.")
        for index, tool in enumerate(tools):
            function = tool.get("function")
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _bad(f"tools[{index}].function.name", f"'tools[{index}].function.name' must be a string.")


def validate_openai_responses(data: dict[str, Any]) -> None:
    """Check what the gateway must understand of a Responses API body; pass everything else through.

    The Responses API moves fast (new item and tool types): a same-format call passes them
    through and OpenAI judges them; a cross-format call translates or refuses them in
    proxy.providers.responses.decode_request.
    """
    model = data.get("model")
    if model is None:
        raise GatewayError("invalid_request", "Missing required parameter: 'model'.", param="model",
                           code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise _bad("model", "'model' must be a non-empty string.")
    items = data.get("input")
    if items is None and data.get("previous_response_id") is None and data.get("conversation") is None \
            and data.get("prompt") is None:
        raise GatewayError("invalid_request", "Missing required parameter: 'input'.", param="input",
                           code="missing_required_parameter")
    if items is not None and not isinstance(items, str | list):
        raise _bad("input", "'input' must be a string or an array of input items.")
    if isinstance(items, list) and not all(isinstance(item, dict) for item in items):
        raise _bad("input", "'input' items must be objects.")
    if "stream" in data and data["stream"] is not None and not isinstance(data["stream"], bool):
        raise _bad("stream", "'stream' must be a boolean.")
    limit = data.get("max_output_tokens")
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise _bad("max_output_tokens", "'max_output_tokens' must be an integer of at least 1.")
    tools = data.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise _bad("tools", "'tools' must be an array of tool objects.")


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit on one request's inputs


def validate_openai_embeddings(data: dict[str, Any]) -> None:
    """An embeddings body: `model`, and `input` as OpenAI takes it (a string, strings, token ids, lists of ids)."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError("invalid_request", "Missing required parameter: 'model' (a non-empty string).",
                           param="model", code="missing_required_parameter")
    items = data.get("input")
    if isinstance(items, str):
        if not items:
            raise _bad("input", "'input' must not be empty.")
    elif not isinstance(items, list) or not items:
        raise _bad("input", "'input' must be a string, an array of strings, an array of token ids or an array of "
                   "arrays of token ids, and not empty.")
    elif len(items) > MAX_EMBEDDING_INPUTS:
        raise _bad("input", f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items.")
    elif not (all(isinstance(i, str) and i for i in items) or all(_is_int(i) for i in items)
            or all(isinstance(i, list) and i and all(_is_int(t) for t in i) for i in items)):
        raise _bad("input", "'input' must be non-empty strings, token ids, or non-empty arrays of token ids, "
                   "all of one kind.")
    dimensions = data.get("dimensions")
    if dimensions is not None and (not _is_int(dimensions) or dimensions < 1):
        raise _bad("dimensions", "'dimensions' must be an integer of at least 1.")
    encoding = data.get("encoding_format")
    if encoding is not None and encoding not in ("float", "base64"):
        raise _bad("encoding_format", "'encoding_format' must be 'float' or 'base64'.")


def validate_anthropic_messages(data: dict[str, Any]) -> None:
    """Check what the gateway must understand of an Anthropic Messages body; pass everything else through.

    Anthropic's API moves fast (system-role messages inside `messages`, new block types,
    `thinking`, `output_config`, `context_management`, server tools): a same-format call
    passes such fields through untouched and Anthropic judges them; a cross-format call
    translates or refuses them in proxy.providers.anthropic.decode_request.
    """
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "model: Field required (a non-empty string).")
    check_model_name(model)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "messages: Field required (a non-empty array of messages).")
    for index, message in enumerate(messages):
        where = f"messages.{index}"
        if not isinstance(message, dict):
            raise _bad(where, f"{where}: must be an object.")
        if not isinstance(message.get("role"), str) or not message["role"]:
            raise _bad(f"{where}.role", f"{where}.role: Field required (a string such as 'user' or 'assistant').")
        content = message.get("content")
        if not isinstance(content, str | list):
            raise _bad(f"{where}.content", f"{where}.content: must be a string or an array of content blocks.")
        if isinstance(content, list):
            for number, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise _bad(f"{where}.content.{number}", f"{where}.content.{number}: must be a content block "
                               "object with a 'type'.")
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
        raise _bad("max_tokens", "max_tokens: must be an integer of at least 1.")
    if "stream" in data and data["stream"] is not None and not isinstance(data["stream"], bool):
        raise _bad("stream", "stream: must be a boolean.")


def validate_gemini_generate(data: dict[str, Any]) -> None:
    """Check what the gateway must understand of a Gemini generateContent body (the model is in the URL).

    `contents` must be a list of Content objects with a `parts` list, and the output limit,
    which budgets reserve against, an integer; everything else passes through on a
    same-format call and is translated or refused by proxy.providers.gemini_caller.
    """
    contents = data.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _bad("contents", "* GenerateContentRequest.contents: contents is not specified (a non-empty array "
                   "of Content objects).")
    for index, content in enumerate(contents):
        where = f"contents[{index}]"
        if not isinstance(content, dict):
            raise _bad(where, f"* GenerateContentRequest.{where}: must be a Content object.")
        role = content.get("role")
        if role is not None and not isinstance(role, str):
            raise _bad(f"{where}.role", f"* GenerateContentRequest.{where}.role: must be a string.")
        parts = content.get("parts")
        if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
            raise _bad(f"{where}.parts", f"* GenerateContentRequest.{where}.parts: must be an array of Part "
                       "objects.")
    config = data.get("generationConfig")
    if config is not None:
        if not isinstance(config, dict):
            raise _bad("generationConfig", "* GenerateContentRequest.generationConfig: must be an object.")
        limit = config.get("maxOutputTokens")
        if limit is not None and (not _is_int(limit) or limit < 1):
            raise _bad("generationConfig.maxOutputTokens",
                       "* GenerateContentRequest.generation_config.max_output_tokens: must be a positive integer.")
