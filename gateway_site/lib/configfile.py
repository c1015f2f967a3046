"""Configuration as code: the YAML loader, the section registry, diff/apply and export.

This is the shared machinery behind `manage.py gateway_apply` and `gateway_export`
(docs/configuration-as-code.md). It lives in gateway_site, not in proxy, because
every app uses it to describe its own section and budgets must never import proxy.
Each app declares its sections in `<app>/configfile.py`; those modules are imported
on first use (as the admin discovers `admin.py`), so no app edits another's code.

A section is one top-level key of the file. It parses its value (checking keys,
types and lines), adds `Change`s to a `Plan` by comparing with the database, and
exports the database back to the same shape. Applying a plan runs the changes'
`apply` callables in order, inside one transaction.
"""
from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Protocol, TypeVar

import yaml
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import ProtectedError
from django.utils.module_loading import autodiscover_modules

MISSING: Any = object()  # a key absent from the file
MODEL_DEFAULT: Any = object()  # take the default from the model field


class ConfigError(Exception):
    """A problem with the file; the message starts with `file:line:`."""


# --- Loading, with line numbers ----------------------------------------------


class ConfigMap(dict):
    """A YAML mapping that remembers where it and each of its keys were written."""

    where: str
    key_where: dict[Any, str]


class ConfigList(list):
    """A YAML sequence that remembers where it and each of its items were written."""

    where: str
    item_where: list[str]


class _Loader(yaml.SafeLoader):
    filename = "<config>"

    def where(self, node: yaml.Node) -> str:
        return f"{self.filename}:{node.start_mark.line + 1}"


def _construct_map(loader: _Loader, node: yaml.MappingNode):  # type: ignore[no-untyped-def]
    data = ConfigMap()
    data.where = loader.where(node)
    data.key_where = {}
    yield data
    # PyYAML silently keeps the last of two equal keys; in a config file that is a typo.
    first: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise ConfigError(f"{loader.where(key_node)}: a key must be a plain value") from None
        if key in first:
            raise ConfigError(
                f"{loader.where(key_node)}: duplicate key {key!r} "
                f"(first at line {first[key].start_mark.line + 1})"
            )
        first[key] = key_node
    loader.flatten_mapping(node)  # resolves `<<:` merge keys; later keys override merged ones
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_where[key] = loader.where(key_node)


def _construct_seq(loader: _Loader, node: yaml.SequenceNode):  # type: ignore[no-untyped-def]
    data = ConfigList()
    data.where = loader.where(node)
    data.item_where = [loader.where(child) for child in node.value]
    yield data
    data.extend(loader.construct_object(child, deep=True) for child in node.value)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def config_load(text: str, *, filename: str) -> ConfigMap:
    """Parse YAML text into ConfigMap/ConfigList values that know their lines."""
    loader = _Loader(text)
    loader.filename = filename
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{filename}{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{filename}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:  # an empty file
        data = ConfigMap()
        data.where, data.key_where = f"{filename}:1", {}
    if not isinstance(data, ConfigMap):
        raise ConfigError(f"{filename}:1: the file must be a mapping of sections (providers:, routes:, ...)")
    return data


# --- Keys and their types --------------------------------------------------------

_EXPECTED = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    bool: "true or false",
    dict: "a mapping",
    list: "a list",
}


def value_describe(value: Any) -> str:
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


def _plain(value: Any) -> Any:
    """Strip the line bookkeeping so values compare and serialise as plain data."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


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

    def bind(self, model: type[models.Model] | None) -> Field:
        bound = replace(self, attr=self.attr or self.key)
        if model is not None and not bound.required and bound.default is MODEL_DEFAULT:
            model_field = model._meta.get_field(bound.attr)
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


def model_clean(
    obj: models.Model,
    *,
    where: str,
    what: str,
    keys: Mapping[str, str],
    exclude: list[str] | None = None,
    full: bool = True,
) -> None:
    """Run the model's own validators; `keys` maps attributes back to file keys for the message."""
    try:
        obj.full_clean(exclude=exclude, validate_unique=full, validate_constraints=full)
    except ValidationError as exc:
        if hasattr(exc, "error_dict"):
            parts = [
                (msg if name == NON_FIELD_ERRORS else f"{keys.get(name, name)}: {msg}")
                for name, errors in exc.message_dict.items()
                for msg in errors
            ]
        else:
            parts = list(exc.messages)
        raise ConfigError(f"{where}: invalid {what}: {'; '.join(parts)}") from None


# --- Plans and changes --------------------------------------------------------


@dataclass
class Change:
    """One line of the diff and the write that makes it true."""

    sign: str  # "+" create, "~" update, "-" delete
    text: str
    apply: Callable[[], None]
    where: str

    def __str__(self) -> str:
        return f"{self.sign} {self.text}"


@dataclass
class Plan:
    """What applying the file would change. `parsed` holds only the sections present in the file."""

    parsed: dict[str, Any]
    section_where: dict[str, str]
    prune: bool = False
    changes: list[Change] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)
    cache: dict[Any, Any] = field(default_factory=dict)  # for sections' look-ups shared across items

    def add(self, sign: str, text: str, apply: Callable[[], None], *, where: str) -> None:
        self.changes.append(Change(sign, text, apply, where))

    def names(self, section_key: str) -> set[str] | None:
        """Names of the items a model section lists in the file; None when the section is absent."""
        items = self.parsed.get(section_key)
        return None if items is None else {item.name for item in items}

    def execute(self) -> None:
        for change in self.changes:
            try:
                change.apply()
            except ProtectedError as exc:
                users = ", ".join(sorted(str(o) for o in exc.protected_objects))
                raise ConfigError(f"{change.where}: cannot {change}: still used by {users}") from None
            except IntegrityError as exc:
                raise ConfigError(f"{change.where}: the database refused {change}: {exc}") from None


# --- Sections ------------------------------------------------------------------


class Section(Protocol):
    """A top-level key of the file. `order` sets apply order; pruning runs in reverse."""

    key: str
    order: int

    def parse(self, value: Any, *, where: str) -> Any: ...
    def diff(self, parsed: Any, plan: Plan) -> None: ...
    def prune(self, parsed: Any, plan: Plan) -> None: ...
    def export(self) -> Any: ...


class ItemKey(Protocol):
    """A key of a section's items that is stored outside the item's row (a route's deployments).

    `diff` gets `obj=None` when the item is created by this same plan (look it up by name
    inside `apply`), and `value=MISSING` when the key is absent from the item. `export`
    returns MISSING to leave the key out.
    """

    key: str

    def parse(self, value: Any, *, where: str) -> Any: ...
    def diff(self, *, item: Item, obj: Any, value: Any, plan: Plan) -> None: ...
    def export(self, obj: Any) -> Any: ...


@dataclass
class Item:
    """One parsed entry of a model section: its name, values by file key, and its other keys."""

    name: str
    where: str
    values: dict[str, Any]
    extras: dict[str, Any]


class ModelSection:
    """A list of model rows identified by a unique name: providers, routes, consumers.

    For a listed item the file is the whole truth: a key left out means its default.
    Rows not listed are left alone, or deleted with --prune.
    """

    def __init__(
        self,
        *,
        key: str,
        label: str,
        model: type[models.Model],
        identity: Field,
        fields: Iterable[Field],
        order: int,
        forbidden: Mapping[str, str] | None = None,
        prefetch: Iterable[str] = (),
        prune_note: Callable[[Any, Plan], str] | None = None,
    ) -> None:
        self.key = key
        self.label = label
        self.model = model
        self.identity = identity.bind(model)
        self.fields = fields_bind(model, fields)
        self.order = order
        self.forbidden = dict(forbidden or {})
        self.prefetch = tuple(prefetch)
        self.prune_note = prune_note
        self.keys: list[ItemKey] = []

    # Extension points for other modules and later issues.
    def add_field(self, new: Field) -> Field:
        """Add a key stored in a column of this section's model."""
        self._check_free(new.key)
        bound = new.bind(self.model)
        self.fields.append(bound)
        return bound

    def add_key(self, new: ItemKey) -> ItemKey:
        """Add a key stored elsewhere (another table), parsed, diffed and exported by `new`."""
        self._check_free(new.key)
        self.keys.append(new)
        return new

    def _check_free(self, key: str) -> None:
        taken = {self.identity.key, *(f.key for f in self.fields), *(k.key for k in self.keys)}
        if key in taken or key in self.forbidden:
            raise ValueError(f"{self.key}: key {key!r} is already defined")

    @property
    def _attr_keys(self) -> dict[str, str]:
        return {f.attr: f.key for f in [self.identity, *self.fields]}

    def _existing(self) -> dict[str, Any]:
        return {getattr(obj, self.identity.attr): obj for obj in self.model.objects.all()}

    def parse(self, value: Any, *, where: str) -> list[Item]:
        if value is None:
            raise ConfigError(f"{where}: '{self.key}' is empty; write `{self.key}: []` to mean none")
        if not isinstance(value, ConfigList):
            raise ConfigError(f"{where}: '{self.key}' must be a list of {self.label}s, got {value_describe(value)}")
        items: list[Item] = []
        first: dict[str, str] = {}
        for raw, item_where in zip(value, value.item_where, strict=True):
            values = mapping_parse(
                raw,
                fields=[self.identity, *self.fields],
                what=self.label,
                where=item_where,
                forbidden=self.forbidden,
                extra_keys=[k.key for k in self.keys],
            )
            name = values.pop(self.identity.key)
            if name in first:
                raise ConfigError(f"{raw.where}: duplicate {self.label} {name!r} (first at {first[name]})")
            first[name] = raw.where
            extras = {k.key: k.parse(raw[k.key], where=raw.key_where[k.key]) for k in self.keys if k.key in raw}
            items.append(Item(name=name, where=raw.where, values=values, extras=extras))
        return items

    def diff(self, parsed: list[Item], plan: Plan) -> None:
        existing = self._existing()
        for item in parsed:
            obj = existing.get(item.name)
            if obj is None:
                self._diff_create(item, plan)
            else:
                self._diff_update(item, obj, plan)
            for item_key in self.keys:
                item_key.diff(item=item, obj=obj, value=item.extras.get(item_key.key, MISSING), plan=plan)

    def _attrs(self, item: Item) -> dict[str, Any]:
        return {self.identity.attr: item.name, **{f.attr: item.values[f.key] for f in self.fields}}

    def _diff_create(self, item: Item, plan: Plan) -> None:
        what = f"{self.label} {item.name!r}"
        # Validate now so a dry run reports what the real run would refuse.
        model_clean(self.model(**self._attrs(item)), where=item.where, what=what, keys=self._attr_keys, full=False)
        shown = [
            f"{f.key}={value_format(item.values[f.key])}"
            for f in self.fields
            if f.required or f.always_export or item.values[f.key] != f.default
        ]
        plan.add(
            "+",
            f"{self.label} {item.name}" + (f" ({', '.join(shown)})" if shown else ""),
            partial(self._create, item),
            where=item.where,
        )

    def _create(self, item: Item) -> None:
        obj = self.model(**self._attrs(item))
        model_clean(obj, where=item.where, what=f"{self.label} {item.name!r}", keys=self._attr_keys)
        obj.save()

    def _diff_update(self, item: Item, obj: Any, plan: Plan) -> None:
        changed = [(f, item.values[f.key]) for f in self.fields if getattr(obj, f.attr) != item.values[f.key]]
        if not changed:
            return
        candidate = copy.copy(obj)
        for f, value in changed:
            setattr(candidate, f.attr, value)
        what = f"{self.label} {item.name!r}"
        model_clean(candidate, where=item.where, what=what, keys=self._attr_keys, full=False)
        shown = ", ".join(
            f"{f.key} {value_format(getattr(obj, f.attr))} → {value_format(value)}" for f, value in changed
        )
        plan.add("~", f"{self.label} {item.name}: {shown}", partial(self._update, item, obj, changed), where=item.where)

    def _update(self, item: Item, obj: Any, changed: list[tuple[Field, Any]]) -> None:
        for f, value in changed:
            setattr(obj, f.attr, value)
        model_clean(obj, where=item.where, what=f"{self.label} {item.name!r}", keys=self._attr_keys)
        obj.save()

    def prune(self, parsed: list[Item], plan: Plan) -> None:
        listed = {item.name for item in parsed}
        for name, obj in self._existing().items():
            if name in listed:
                continue
            if not plan.prune:
                plan.left_alone.append(f"{self.label} {name}")
                continue
            note = self.prune_note(obj, plan) if self.prune_note else ""
            plan.add(
                "-",
                f"{self.label} {name}{note}",
                partial(self._delete, obj.pk),
                where=plan.section_where[self.key],
            )

    def _delete(self, pk: Any) -> None:
        # A queryset delete still sends post_delete, so the caches hear about it.
        self.model.objects.filter(pk=pk).delete()

    def export(self) -> list[dict[str, Any]]:
        rows = []
        for obj in self.model.objects.prefetch_related(*self.prefetch).order_by(self.identity.attr):
            row: dict[str, Any] = {self.identity.key: getattr(obj, self.identity.attr)}
            for f in self.fields:
                value = getattr(obj, f.attr)
                if f.required or f.always_export or value != f.default:
                    row[f.key] = f.export(value)
            for item_key in self.keys:
                value = item_key.export(obj)
                if value is not MISSING:
                    row[item_key.key] = value
            rows.append(row)
        return rows


# --- Registry -------------------------------------------------------------------

_sections: dict[str, Section] = {}
_discovered = False


_S = TypeVar("_S", bound=Section)


def section_register(section: _S) -> _S:
    """Add a top-level section; call it at import time of `<app>/configfile.py`."""
    if _sections.get(section.key, section) is not section:
        raise ValueError(f"configuration section {section.key!r} is registered twice")
    _sections[section.key] = section
    return section


def sections_all() -> list[Section]:
    global _discovered
    if not _discovered:
        autodiscover_modules("configfile")
        _discovered = True
    return sorted(_sections.values(), key=lambda s: (s.order, s.key))


# --- Apply and export --------------------------------------------------------------


def config_plan(root: ConfigMap, *, prune: bool = False) -> Plan:
    """Parse every section, then compare with the database. Reads only."""
    sections = sections_all()
    known = {s.key for s in sections}
    for key in root:
        if key not in known:
            raise ConfigError(
                f"{root.key_where[key]}: unknown section {key!r} (expected one of: {', '.join(sorted(known))})"
            )
    present = [s for s in sections if s.key in root]
    plan = Plan(parsed={}, section_where={s.key: root.key_where[s.key] for s in present}, prune=prune)
    for s in present:
        plan.parsed[s.key] = s.parse(root[s.key], where=root.key_where[s.key])
    for s in present:
        s.diff(plan.parsed[s.key], plan)
    # Deletions go last and backwards, so what a later section uses (a route's
    # deployments use providers) is gone before what it used.
    for s in reversed(present) if prune else present:
        s.prune(plan.parsed[s.key], plan)
    return plan


def config_apply(*, text: str, filename: str, dry_run: bool = False, prune: bool = False) -> Plan:
    """Make the database match the file, all or nothing; with dry_run, only report."""
    root = config_load(text, filename=filename)
    with transaction.atomic():
        plan = config_plan(root, prune=prune)
        if dry_run:
            transaction.set_rollback(True)
        else:
            plan.execute()
    return plan


class FlowMap(dict):
    """A mapping that export writes on one line: `- {provider: x, model: y}`."""


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Indent list items under their key, as the documentation writes them.
        return super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(
    FlowMap, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)
)

EXPORT_HEADER = (
    "# Tollgate configuration, written by `manage.py gateway_export`; apply with `manage.py gateway_apply`.\n"
    "# Credentials are named (api_key_env / api_key_file), never included; keys come from `manage.py issuekey`.\n"
)


def config_export() -> str:
    """The database's configuration in the format gateway_apply reads."""
    blocks = [
        yaml.dump({s.key: s.export()}, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
        for s in sections_all()
    ]
    return EXPORT_HEADER + "\n".join(blocks)
