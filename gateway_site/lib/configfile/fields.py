"""The keys of an item: their types, defaults and checks, and how values are shown.

`Field` ties one file key to one model attribute, taking its default from the model
field so the model stays the single source of truth. `value_describe` (what the file
holds, for error messages) and `value_format` (a value on one diff line) are the two
renderings every section shares.
"""
from __future__ import annotations

import builtins
import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from django.db import models

from gateway_site.lib.configfile.loading import ConfigError, ConfigMap

MISSING: Any = object()  # a key absent from the file
MODEL_DEFAULT: Any = object()  # take the default from the model field

_EXPECTED = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    dict: "a mapping",
    list: "a list",
}


def value_describe(value: Any) -> str:
    """What the file holds, for an error message: `string 'x'`, `a list`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    kind = {int: "integer", float: "number", str: "string"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}"


def value_format(value: Any) -> str:
    """A short, one-line rendering of a value for diff lines."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str):
        text = value if re.fullmatch(r"[\w./:@+-]+", value) else json.dumps(value, ensure_ascii=False)
    elif isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _plain(value: Any) -> Any:
    """Strip the line bookkeeping so values compare and serialise as plain data."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class FlowMap(dict):
    """A mapping that export writes on one line: `- {provider: x, model: y}`."""


@dataclass(frozen=True)
class Field:
    """One key of an item, stored in the model attribute `attr` (default: the key itself).

    `default` defaults to the model field's default, so the model stays the single
    source of truth; `check` returns an error message or None; `always_export`
    writes the key even when it holds its default.
    """

    key: str
    type: type
    attr: str = ""
    required: bool = False
    default: Any = MODEL_DEFAULT
    nullable: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None
    always_export: bool = False

    def bind(self, model: builtins.type[models.Model] | None) -> Field:
        bound = replace(self, attr=self.attr or self.key)
        if model is not None and not bound.required and bound.default is MODEL_DEFAULT:
            model_field = model._meta.get_field(bound.attr)
            assert isinstance(model_field, models.Field)  # a column of the model, never a relation's far side
            bound = replace(bound, default=model_field.get_default(), nullable=bound.nullable or model_field.null)
        if not bound.required and bound.default is MODEL_DEFAULT:
            raise TypeError(f"Field {self.key!r} needs a default or a model to take it from")
        return bound

    def default_value(self) -> Any:
        return copy.deepcopy(self.default)

    def parse(self, value: Any, *, where: str) -> Any:
        if value is None and self.nullable:
            return None
        ok = isinstance(value, self.type) and (self.type is bool or not isinstance(value, bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok, value = True, float(value)
        if not ok:
            hint = " (quote it)" if self.type is str and value is not None else ""
            raise ConfigError(f"{where}: {self.key} must be {_EXPECTED[self.type]}{hint}, got {value_describe(value)}")
        value = _plain(value)
        if self.choices and value not in self.choices:
            raise ConfigError(
                f"{where}: invalid {self.key} {value!r} (expected one of: {', '.join(self.choices)})"
            )
        if self.check is not None:
            problem = self.check(value)
            if problem:
                raise ConfigError(f"{where}: {problem}")
        return value

    def export(self, value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)  # the file says `timeout_seconds: 60`, not 60.0
        if isinstance(value, dict):
            return FlowMap(value)
        return value


def fields_bind(model: type[models.Model] | None, fields: Iterable[Field]) -> list[Field]:
    return [f.bind(model) for f in fields]


def mapping_parse(
    value: Any,
    *,
    fields: list[Field],
    what: str,
    where: str,
    forbidden: Mapping[str, str] | None = None,
    extra_keys: Iterable[str] = (),
) -> dict[str, Any]:
    """Check a mapping's keys and types; return {key: value} with defaults filled in.

    `forbidden` maps keys that must never appear to the message explaining why;
    `extra_keys` are allowed keys that the caller parses itself.
    """
    if not isinstance(value, ConfigMap):
        raise ConfigError(f"{where}: each {what} must be a mapping of keys to values, got {value_describe(value)}")
    forbidden = forbidden or {}
    allowed = [f.key for f in fields] + list(extra_keys)
    for key in value:
        if key in forbidden:
            raise ConfigError(f"{value.key_where[key]}: {forbidden[key]}")
        if key not in allowed:
            raise ConfigError(
                f"{value.key_where[key]}: unknown key {key!r} in {what} (expected one of: {', '.join(allowed)})"
            )
    result: dict[str, Any] = {}
    for f in fields:
        if f.key in value:
            result[f.key] = f.parse(value[f.key], where=value.key_where[f.key])
        elif f.required:
            raise ConfigError(f"{value.where}: {what} is missing the required key {f.key!r}")
        else:
            result[f.key] = f.default_value()
    return result
