"""The generic section for a list of named model rows: providers, routes, consumers.

Most of the file is this shape, so the compare-with-the-database, validate, create,
update, prune and export steps are written once here; a section only names its model,
its identity key and its `Field`s, and hangs further keys on with `add_key`.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models

from gateway_site.lib.configfile.fields import MISSING, Field, fields_bind, mapping_parse, value_describe, value_format
from gateway_site.lib.configfile.loading import ConfigError, ConfigList
from gateway_site.lib.configfile.plan import Item, ItemKey, Plan


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
        return {getattr(obj, self.identity.attr): obj for obj in self.model._default_manager.all()}

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
        self.model._default_manager.filter(pk=pk).delete()

    def export(self) -> list[dict[str, Any]]:
        rows = []
        for obj in self.model._default_manager.prefetch_related(*self.prefetch).order_by(self.identity.attr):
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
