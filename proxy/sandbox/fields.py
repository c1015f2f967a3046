"""Checks of request-body fields, shared by every wire format's parser.

A bad field is a SandboxRequestError naming it (`param`), which the server turns into a 400 in
the caller's error shape; one set of checks keeps the messages the same in every format.
"""
from __future__ import annotations

from typing import Any

import orjson

from proxy.sandbox.config import is_int
from proxy.sandbox.model import Conversation, SandboxRequestError, Turn, canonical_json


def check_string(value: Any, param: str, *, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise SandboxRequestError(f"'{param}' must be a non-empty string.", param)
    return value


def check_number(value: Any, param: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise SandboxRequestError(f"'{param}' must be a number.", param)


def check_positive_int(value: Any, param: str) -> int | None:
    if value is None:
        return None
    if not is_int(value) or value < 1:
        raise SandboxRequestError(f"'{param}' must be an integer >= 1.", param)
    return value


def check_boolean(value: Any, param: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise SandboxRequestError(f"'{param}' must be a boolean.", param)
    return value


def check_string_list(value: Any, param: str, *, allow_string: bool = False) -> list[str]:
    if value is None:
        return []
    if allow_string and isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise SandboxRequestError(f"'{param}' must be a list of strings.", param)
    return value


def check_object(value: Any, param: str) -> dict:
    if not isinstance(value, dict):
        raise SandboxRequestError(f"'{param}' must be an object.", param)
    return value


def check_list(value: Any, param: str, *, non_empty: bool = False) -> list:
    if not isinstance(value, list) or (non_empty and not value):
        qualifier = "a non-empty" if non_empty else "an"
        raise SandboxRequestError(f"'{param}' must be {qualifier} array.", param)
    return value


def add_text(turn: Turn, text: str) -> None:
    if text:
        turn.pieces.append(text)
        turn.texts.append(text)


def add_call(turn: Turn, name: str, arguments: str) -> None:
    turn.pieces.extend(p for p in (name, arguments) if p)


def add_result(turn: Turn, texts: list[str]) -> None:
    turn.pieces.extend(t for t in texts if t)
    turn.tool_result = "\n".join(texts)


def check_tool_name(conv: Conversation, param: str) -> Conversation:
    if conv.tool_name is not None and all(t.name != conv.tool_name for t in conv.tools):
        raise SandboxRequestError(f"'{param}' names a tool that is not defined: {conv.tool_name!r}.", param)
    return conv


def content_type_error(param: str) -> SandboxRequestError:
    return SandboxRequestError(f"'{param}' must be a string or an array of content parts.", param)


def canonical_arguments(arguments: str) -> str:
    try:
        return canonical_json(orjson.loads(arguments))
    except orjson.JSONDecodeError:
        return arguments


def camel(body: dict, camel_name: str, snake_name: str) -> Any:
    # The REST API accepts both spellings of every field (protobuf JSON mapping).
    value = body.get(camel_name)
    return body.get(snake_name) if value is None else value
